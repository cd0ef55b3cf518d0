"""Screenshots of every tab of the app, for the README: `python docs/screenshots.py` (about 2 minutes on 2 cores).

Starts `python app.py` on a free port with a fresh runs folder, opens it in headless Chromium (the browser
tests' executable and arguments), trains a small run on the built-in shapes, queues its "Dice instead of
..." variant from the Compare tab, predicts an example image with its true mask (shipped model), and saves one PNG per
tab as docs/screenshot-<tab label>.png. Tabs are found by their label, so a tab added later is captured too.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import app_subprocess  # noqa: E402
from tests.test_app_browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

EXAMPLE = ROOT / "examples" / "shapes_4.png"  # one the shipped model gets right
EXAMPLE_MASK = ROOT / "examples" / "masks" / "shapes_4.png"

# a run that finishes in well under a minute here and still learns enough to show curves and a filmstrip
SMALL_RUN = {"image-size": 64, "width": 8, "train-images": 256, "epochs": 10, "time-budget": 0}
MINUTE = 60_000


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "tab"


def set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def train_and_compare(page) -> None:
    """A small run, then its Dice variant queued from Compare; returns when both are done and compared."""
    from playwright.sync_api import expect

    expect(page.locator("#data-report")).to_contain_text("Ready to train", timeout=2 * MINUTE)
    # the preset's plan lands after the check and sets every setting: change them only after it
    expect(page.locator("#preset-why")).to_contain_text("epochs", timeout=2 * MINUTE)
    for elem_id, value in SMALL_RUN.items():
        set_number(page, elem_id, value)
    page.locator("#train-btn").click()
    status = page.locator("#run-status")
    expect(status).to_contain_text("Finished", timeout=5 * MINUTE)
    page.get_by_role("tab", name="Compare").click()
    button = page.locator("#ablate-loss")
    expect(button).to_be_enabled(timeout=MINUTE)
    button.click()
    expect(page.locator("#ablate-status")).to_contain_text("Queued", timeout=MINUTE)
    # the variant streams into the Train tab; when it ends, Compare lists and ticks it
    expect(page.locator("#compare-settings")).to_contain_text("Settings that differ", timeout=5 * MINUTE)
    expect(page.locator("#compare-curves svg").first).to_be_visible()


def predict_example(page) -> None:
    """The shipped model on an example with its true mask, probability maps shown. Best effort: a step whose
    widget has moved on is reported and skipped, so the other tabs are still captured."""
    from playwright.sync_api import expect

    steps = [
        ("choose the shipped model", lambda: page.locator("#model-choice input").click()),
        ("", lambda: page.get_by_role("option", name=re.compile("^Shipped model")).click()),
        ("show probability maps", lambda: page.get_by_label("Show per-class probability maps").check()),
        ("upload an example", lambda: page.locator("#predict-images input[type=file]").set_input_files(str(EXAMPLE))),
        ("and its mask", lambda: page.locator("#predict-masks input[type=file]").set_input_files(str(EXAMPLE_MASK))),
        ("wait for the scores", lambda: expect(page.get_by_text("against its mask")).to_be_visible(timeout=MINUTE)),
    ]
    for what, step in steps:
        try:
            step()
        except Exception as e:  # the screenshot is still worth taking
            print(f"Predict: could not {what or 'pick it'} ({type(e).__name__}); taking the picture anyway")
            return


def shoot(url: str, out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    saved = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(MINUTE)
        page.goto(url)
        train_and_compare(page)
        labels = [t.strip() for t in page.get_by_role("tab").all_inner_texts() if t.strip()]
        for label in labels:
            page.get_by_role("tab", name=label, exact=True).click()
            if label == "Predict":
                predict_example(page)
            time.sleep(2)  # plots and pictures settle
            page.mouse.move(0, 0)  # no hover highlight in the picture
            path = out / f"screenshot-{slug(label)}.png"
            page.screenshot(path=str(path), full_page=True)
            saved.append(path)
            print(f"{label}: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}", flush=True)
        browser.close()
    return saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for the PNGs (default: docs/)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="segdemo-screenshots-") as tmp:
        with app_subprocess(Path(tmp)) as (url, log_path):
            try:
                shoot(url, args.out)
            except Exception:
                print(log_path.read_text()[-3000:], file=sys.stderr)
                raise


if __name__ == "__main__":
    main()
