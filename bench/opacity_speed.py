"""Predict's opacity slider as a student feels it: headless Chromium against the real server (`python app.py`).

The page segments a 512x512 photo with the shipped model once; then, --changes times, the opacity slider is
moved to a value it has not had yet (the range input's input, change and pointerup events, as a drag that ends) and the
time runs from that change until every picture of the result whose address changed is decoded in the page
(MutationObserver on the pictures' src, then img.decode()). Predictions the server logged meanwhile are
counted: changing the opacity should redraw the kept prediction, not run the model.

With --baseline DIR (another checkout, e.g. main) both servers run side by side, the changes alternating
between their pages, and the ratio of the medians is printed: before, the slider's release re-ran Predict.

    python bench/opacity_speed.py [--changes 17] [--baseline ../main]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import REPO, load, machine, median, p95, start_app
from PIL import Image

from segdemo.data.builtin import make_sample

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
RESULT_PICTURES = "#out-slider img, #out-overlay img"  # this version's slider; older ones' overlay image
MODEL_RAN = "the model ran"  # the server's log line for each prediction (segdemo/ui/predict_tab.py)

# Move the opacity slider to `v`; resolve with the ms until the changed result pictures are decoded.
MOVE_AND_WAIT = """async ([v, selector]) => {
  const pictures = () => [...document.querySelectorAll(selector)];
  const before = pictures().map(i => i.src).join('|');
  const range = [...document.querySelectorAll('input[type=range]')]
    .find(r => r.getAttribute('aria-label') === 'range slider for Overlay opacity');
  return await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no new picture within 30 s')), 30000);
    const obs = new MutationObserver(async () => {
      const now = pictures();
      if (now.map(i => i.src).join('|') === before) return;
      obs.disconnect();
      await Promise.all(now.map(i => i.decode().catch(() => null)));
      clearTimeout(timer);
      resolve(performance.now() - t0);
    });
    obs.observe(document.body, {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
    const t0 = performance.now();
    range.value = String(v);
    for (const kind of ['input', 'change']) range.dispatchEvent(new Event(kind, {bubbles: true}));
    range.dispatchEvent(new PointerEvent('pointerup', {bubbles: true}));
  });
}"""


def opacities() -> list[float]:
    """The slider's 20 other values (step 0.05, it starts at 0.5), each once, far apart in turn: no picture is
    shown twice, so neither the server nor the browser has it already."""
    return [round(0.05 * ((8 * i) % 21), 2) for i in range(21) if (8 * i) % 21 != 10]


class Server:
    """One checkout's app, a page on its Predict tab with a photo segmented, and its log."""

    def __init__(self, name: str, repo: Path, browser, photo: Path, tmp: Path):
        from playwright.sync_api import expect

        self.name, self.log = name, tmp / f"{name}.log"
        self.url, self.proc = start_app(repo=repo, log=self.log)
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.page.set_default_timeout(120_000)
        self.page.goto(self.url)
        expect(self.page.locator("#data-report")).to_contain_text("Ready to train", timeout=120_000)
        self.page.get_by_role("tab", name="Predict").click()
        self.page.locator("#predict-images input[type=file]").set_input_files(str(photo))
        expect(self.page.locator("#predict-table")).to_contain_text("share of predicted pixels", timeout=120_000)
        expect(self.page.locator(RESULT_PICTURES).first).to_be_visible()
        time.sleep(1)  # let the first prediction's follow-ups settle
        self.times: list[float] = []

    def model_runs(self) -> int | None:
        """Predictions logged so far; None for a version that does not log them."""
        text = self.log.read_text()
        return text.count(MODEL_RAN) if MODEL_RAN in text else None

    def move(self, value: float) -> None:
        self.times.append(self.page.evaluate(MOVE_AND_WAIT, [value, RESULT_PICTURES]))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=17, help="opacity changes per server after 3 warm-ups (at most 17)")
    ap.add_argument("--baseline", type=Path, help="another checkout to measure side by side (e.g. ../main)")
    args = ap.parse_args()
    print(machine(), "|", load(), flush=True)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp_name, sync_playwright() as p:
        tmp = Path(tmp_name)
        photo = tmp / "photo.png"
        Image.fromarray(make_sample(np.random.default_rng(5), 128)[0]).resize((512, 512)).save(photo)
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        servers = [Server("this", REPO, browser, photo, tmp)]
        if args.baseline:
            servers.append(Server("baseline", args.baseline.resolve(), browser, photo, tmp))
        try:
            runs_before = [s.model_runs() for s in servers]
            values = opacities()[: args.changes + 3]
            for i, v in enumerate(values):
                for s in servers:  # alternate: both see the same machine load
                    s.move(v)
                    if i < 3:
                        s.times.pop()  # warm-up
            line = []
            for s, before in zip(servers, runs_before, strict=True):
                after = s.model_runs()
                runs = "not logged by this version" if after is None else after - before
                print(
                    f"{s.name}: opacity change -> picture decoded, {len(s.times)} changes: median "
                    f"{median(s.times):.0f} ms, p95 {p95(s.times):.0f} ms, min {min(s.times):.0f} ms; "
                    f"model runs during them: {runs} | {load()}",
                    flush=True,
                )
                line.append(f"{s.name}_median_ms={median(s.times):.0f} {s.name}_model_runs={runs}")
            if len(servers) == 2:
                ratio = median(servers[1].times) / median(servers[0].times)
                line.append(f"baseline_over_this={ratio:.1f}x")
            print(" ".join(line).replace("not logged by this version", "n/a"))
        finally:
            for s in servers:
                s.close()
            browser.close()


if __name__ == "__main__":
    main()
