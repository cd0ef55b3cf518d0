"""A student makes a dataset in the Label tab and trains on it: the wall time, in headless Chromium against the
real server (`python app.py` on a free port).

The scripted student opens the page, adds 6 photos (Oxford-IIIT Pet from ../shared/data when it is there, else
built-in shapes), names two classes (background, pet), paints each photo with a few mouse strokes per class
and presses "Save and next photo", then "Train on these". In the Train tab it waits for the preset that button
picks (instant: the frozen ImageNet encoder, a 20 s budget) to be planned for that set, presses Train, waits
until the run has ended and its model is chosen in Predict, then segments a 7th photo there against its true mask.

Strokes go where a careful student would put them: well inside each class's region of the photo's true
mask (the deepest points of the region shrunk by a brush width), so the painted labels can be checked
against the truth afterwards (printed as "labels right").

Prints the total wall time and its parts; the target is under 5 minutes.

    python bench/label_speed.py [--data ../shared/data/oxford-iiit-pet-mini] [--photos 6] [--strokes 2]
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from common import DEFAULT_DATA, load, machine, median, start_app
from PIL import Image

from segdemo.data.builtin import make_sample
from segdemo.server.labelset import LABEL_MAX_SIDE
from tests.label_page import open_photo, pick_class, stroke

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
CLASSES = ("background", "pet")


def pet_photos(root: Path, n: int) -> list[tuple[Path, np.ndarray]]:
    """(photo, true ids: 0 background, 1 pet, 255 the border) for the first n+1 pets with a trimap."""
    pet = root / "oxford-iiit-pet"
    out = []
    for img in sorted((pet / "images").glob("*.jpg")):
        tri = pet / "annotations" / "trimaps" / f"{img.stem}.png"
        if tri.is_file():
            t = np.array(Image.open(tri))
            out.append((img, np.select([t == 1, t == 2], [1, 0], 255).astype(np.uint8)))
        if len(out) == n + 1:
            break
    return out


def shape_photos(folder: Path, n: int) -> list[tuple[Path, np.ndarray]]:
    """Built-in shapes as files, with every shape class folded into "pet" (the object)."""
    out = []
    for i in range(n + 1):
        image, mask = make_sample(np.random.default_rng(1000 + i))
        path = folder / f"shapes_{i}.png"
        Image.fromarray(image).save(path)
        out.append((path, (mask > 0).astype(np.uint8)))
    return out


def stored_size(w: int, h: int) -> tuple[int, int]:
    """The size the Label tab keeps a photo at (labelset.add_photo: longest side at most LABEL_MAX_SIDE)."""
    f = min(1.0, LABEL_MAX_SIDE / max(w, h))
    return (max(16, round(w * f)), max(16, round(h * f))) if f < 1 else (w, h)


def strokes_for(truth: np.ndarray, k: int) -> list[tuple[int, list[tuple[float, float]]]]:
    """(class, points in photo pixels) for k strokes per class: short horizontal strokes at the deepest points
    of each region, after shrinking it by a brush width so the paint stays inside."""
    h, w = truth.shape
    brush = max(3, round(min(h, w) / 25))
    out = []
    for cls in range(len(CLASSES)):
        region = cv2.erode((truth == cls).astype(np.uint8), np.ones((2 * brush + 1, 2 * brush + 1), np.uint8))
        dist = cv2.distanceTransform(region, cv2.DIST_L2, 5)
        for _ in range(k):
            y, x = np.unravel_index(int(dist.argmax()), dist.shape)
            d = float(dist[y, x])
            if d < 2:
                break
            half = min(0.8 * d, w / 6)
            out.append((cls, [(x - half, float(y)), (x + half, float(y))]))
            cv2.circle(dist, (int(x), int(y)), int(2 * d + 2 * brush), 0, -1)  # the next stroke goes elsewhere
    return out


def paint(page, size: tuple[int, int], strokes) -> None:
    """Draw strokes given in photo pixels: the editor shows the photo centred in its canvas at the zoom its
    toolbar reads (e.g. "129%")."""
    editor = page.locator("#label-editor")
    box = editor.locator("canvas").first.bounding_box()
    zoom = float(re.search(r"(\d+)%", editor.get_by_text(re.compile(r"^\d+%$")).first.inner_text()).group(1)) / 100
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    w, h = size
    editor.locator("button[title=Brush]").click()
    current = None
    for cls, pts in strokes:
        if cls != current:
            pick_class(page, cls)
            current = cls
        screen = [(cx + (x - w / 2) * zoom, cy + (y - h / 2) * zoom) for x, y in pts]
        stroke(page, screen)


def labels_right(runs_dir: Path, photos: list[tuple[Path, np.ndarray]]) -> tuple[float, int]:
    """(share of painted pixels whose class matches the true mask, painted pixels) over the saved masks."""
    import json

    right = total = 0
    sets = [d for d in (runs_dir / "labelsets").iterdir() if d.is_dir()]
    doc = json.loads((sets[0] / "set.json").read_text())
    truth_by_name = {p.name: t for p, t in photos}
    for entry in doc["photos"]:
        mask = np.array(Image.open(sets[0] / "masks" / f"{entry['id']}.png"))
        truth = cv2.resize(truth_by_name[entry["name"]], mask.shape[::-1], interpolation=cv2.INTER_NEAREST)
        painted = (mask != 255) & (truth != 255)
        right += int((mask[painted] == truth[painted]).sum())
        total += int((mask != 255).sum())
    return (right / total if total else float("nan")), total


class Student:
    """The scripted student's session in one browser page; `parts` collects the seconds of each step."""

    def __init__(self, page, strokes_per_class: int):
        self.page, self.k = page, strokes_per_class
        self.parts: dict[str, float] = {}
        self.strokes = 0
        self.photo_waits: list[float] = []  # seconds from an action to the editor showing its new photo
        self._t = time.time()

    def lap(self, name: str) -> None:
        now = time.time()
        self.parts[name] = self.parts.get(name, 0.0) + now - self._t
        self._t = now

    def run(self, url: str, label, held_out: Path, truth_png: Path) -> tuple[str, str]:
        """Label, train, predict; returns the run's final status line and the prediction's summary."""
        from playwright.sync_api import expect

        page = self.page
        page.goto(url)
        page.get_by_role("tab", name="Label").click()
        expect(page.locator("#label-editor")).to_be_visible()
        self.lap("open")
        progress = page.locator("#label-progress")
        files = [str(q) for q, _ in label]
        self.photo_waits.append(
            open_photo(page, lambda: page.locator("#label-upload input[type=file]").set_input_files(files))
        )
        expect(progress).to_contain_text(f"0 of {len(label)} labelled")
        self.lap("add photos")
        box = page.locator("#label-classes textarea, #label-classes input").first
        box.fill(", ".join(CLASSES))
        box.press("Enter")
        expect(page.locator("#label-legend")).to_contain_text(CLASSES[1])
        self.lap("name classes")
        for i, (path, truth) in enumerate(label):
            expect(page.locator("#label-photo input")).to_have_value(re.compile(re.escape(path.name)))
            size = stored_size(*Image.open(path).size)
            strokes = strokes_for(cv2.resize(truth, size, interpolation=cv2.INTER_NEAREST), self.k)
            self.strokes += len(strokes)
            self.lap("load photo")
            paint(page, size, strokes)
            self.lap("paint")
            if i + 1 < len(label):
                self.photo_waits.append(open_photo(page, page.locator("#label-next").click))
            else:  # the last: the page goes back to the first photo, which the browser has already
                page.locator("#label-next").click()
            expect(progress).to_contain_text(f"{i + 1} of {len(label)} labelled")
            self.lap("save")
        page.locator("#label-train").click()
        expect(page.get_by_role("tab", name="Train")).to_have_attribute("aria-selected", "true")
        expect(page.locator("#data-report")).to_contain_text(f"{len(label)} pairs")
        expect(page.locator("#preset-why")).to_contain_text(re.compile(r"epochs of [1-9] images"))  # this set's plan
        self.lap("train on these")
        page.locator("#train-btn").click()
        status = page.locator("#run-status")
        expect(status).to_contain_text(re.compile("Finished|Reached the time limit"), timeout=600_000)
        status_text = status.inner_text()
        self.lap("train")
        page.get_by_role("tab", name="Predict").click()
        expect(page.locator("#model-choice input")).to_have_value(re.compile("^Your run from"))
        page.locator("#predict-images input[type=file]").set_input_files(str(held_out))
        page.locator("#predict-masks input[type=file]").set_input_files(str(truth_png))
        expect(page.locator("#out-color img").first).to_be_visible()
        summary = page.get_by_text("against its mask")
        expect(summary).to_be_visible()
        self.lap("predict")
        return status_text, summary.inner_text()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA / "oxford-iiit-pet-mini")
    ap.add_argument("--photos", type=int, default=6)
    ap.add_argument("--strokes", type=int, default=2, help="strokes per class per photo")
    ap.add_argument("--url", help="use an app already running there (its labels are then not checked)")
    args = ap.parse_args()
    from playwright.sync_api import expect, sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="segdemo-label-bench-"))
    photos = pet_photos(args.data, args.photos) if args.data.is_dir() else []
    source = f"Oxford-IIIT Pet ({args.data})"
    if len(photos) < args.photos + 1:
        photos, source = shape_photos(tmp, args.photos), "built-in shapes (no pet photos found)"
    label, (held_out, held_truth) = photos[: args.photos], photos[args.photos]
    truth_png = tmp / f"{held_out.stem}.png"
    Image.fromarray(held_truth).save(truth_png)  # class ids, 255 = the border: scored as ignore

    url, proc = (args.url, None) if args.url else start_app()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(120_000)
            expect.set_options(timeout=120_000)  # a loaded machine draws the canvas slowly
            student = Student(page, args.strokes)
            refused: list[str] = []
            page.on("response", lambda r: refused.append(f"{r.status} {r.url[:90]}") if r.status >= 400 else None)
            t_start = time.time()
            try:
                status_text, summary = student.run(url, label, held_out, truth_png)
            except Exception:
                page.screenshot(path=str(tmp / "failed.png"), full_page=True)
                print(f"failed; the page is in {tmp / 'failed.png'}; refused requests: {refused or 'none'}")
                raise
            total = time.time() - t_start
            browser.close()
        right, painted = labels_right(proc.runs_dir, label) if proc else (float("nan"), 0)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    val = re.search(r"val mIoU \*\*([\d.]+)", status_text)
    held = re.search(r"mIoU \**([\d.]+)", summary)
    print(f"label_speed: {machine()}, {load()}")
    print(f"  data: {source}; {len(label)} photos, {student.strokes} strokes")
    waits = student.photo_waits
    print(f"  the editor showed each new photo after {min(waits):.1f}-{max(waits):.1f} s (median {median(waits):.1f})")
    print(f"  painted labels agree with the true masks on {right:.1%} of {painted} painted pixels")
    print("  " + ", ".join(f"{k} {v:.1f} s" for k, v in student.parts.items()))
    print(
        f"  trained model: best val mIoU {val.group(1) if val else '?'}; on the held-out photo "
        f"{held_out.name} mIoU {held.group(1) if held else '?'}"
    )
    first = student.parts.get("train", float("nan")) + student.parts.get("predict", float("nan"))
    print(f"  Train pressed -> the 7th photo's prediction shown: {first:.1f} s (target 30 s, instant mode)")
    print(
        f"label_speed total {total:.1f} s for {len(label)} photos, labelled and trained (target 300 s): "
        f"{'met' if total < 300 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
