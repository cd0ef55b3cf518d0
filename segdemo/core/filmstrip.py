"""The filmstrip's history: one small picture per epoch in the run folder, and an animated GIF of them for slides.

Every EpochEnd carries the fixed validation images' predictions (events.Preview), but a job keeps only the
latest epoch's in memory. So each epoch's filmstrip is drawn once, small, into `run_dir/filmstrip/epoch_NNN.png`
(columns: the validation images; rows: image, true mask, prediction; a caption with the epoch and its mIoU),
and write_gif() strings those frames together. The frames outlive a server restart with the run folder.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from segdemo.atomic import replace_file
from segdemo.core.viz import colorize
from segdemo.data.base import ClassSet
from segdemo.errors import JobError
from segdemo.events import EpochEnd

log = logging.getLogger(__name__)
FOLDER = "filmstrip"
TILE = 96  # each picture fits a TILE x TILE box: legible on a slide, and a frame stays ~900 x 330 px
MAX_COLUMNS = 8  # validation images per frame (the trainer sends 8 by default)
MAX_GIF_FRAMES = 60  # a longer run's GIF takes 60 epochs evenly, always the first and the last
FRAME_MS, LAST_FRAME_MS = 700, 2500  # the last frame stays up, so the result can be read before it loops
GAP, LABEL_W, CAPTION_H = 4, 84, 30
ROWS = ("image", "true mask", "prediction")
_FRAME = re.compile(r"^epoch_(\d{3,})\.png$")


def frame_path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / FOLDER / f"epoch_{epoch:03d}.png"


def draw_frame(ev: EpochEnd, classes: ClassSet) -> Image.Image:
    """One epoch's filmstrip as a picture: a column per validation image, rows image / true mask / prediction."""
    previews = ev.previews[:MAX_COLUMNS]
    n = max(1, len(previews))
    width = LABEL_W + n * (TILE + GAP)
    height = CAPTION_H + len(ROWS) * (TILE + GAP)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(15)
    draw.text((6, 6), f"epoch {ev.epoch}/{ev.epochs} · val mIoU {ev.miou:.3f}", fill=(20, 20, 20), font=font)
    for r, label in enumerate(ROWS):
        y = CAPTION_H + r * (TILE + GAP)
        draw.text((6, y + TILE // 2 - 8), label, fill=(60, 60, 60), font=_font(13))
    for c, p in enumerate(previews):
        x = LABEL_W + c * (TILE + GAP)
        pictures = (p.image, colorize(p.target, classes), colorize(p.pred, classes))
        for r, (pic, nearest) in enumerate(zip(pictures, (False, True, True), strict=True)):
            tile = _fit(pic, nearest)
            y = CAPTION_H + r * (TILE + GAP)
            canvas.paste(Image.fromarray(tile), (x + (TILE - tile.shape[1]) // 2, y + (TILE - tile.shape[0]) // 2))
    return canvas


def save_frame(run_dir: Path, ev: EpochEnd, classes: ClassSet) -> Path | None:
    """Draw this epoch's frame into the run folder (replacing one a resumed run redoes); None without previews."""
    if not ev.previews:
        return None
    import io

    buf = io.BytesIO()
    # 256 colours, as the GIF will have them anyway: a quarter of the bytes, and the GIF needs no slow quantising
    frame = draw_frame(ev, classes).quantize(256, method=Image.Quantize.FASTOCTREE)
    frame.save(buf, format="PNG", optimize=False, compress_level=6)
    path = frame_path(run_dir, ev.epoch)
    path.parent.mkdir(exist_ok=True)
    return replace_file(path, buf.getvalue(), fsync=False)


def frames(run_dir: Path) -> list[Path]:
    """The run's saved frames, in epoch order."""
    folder = Path(run_dir) / FOLDER
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _FRAME.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def pick(items: list, most: int) -> list:
    """At most `most` items spread evenly, always the first and the last."""
    if len(items) <= most:
        return list(items)
    idx = np.linspace(0, len(items) - 1, most).round().astype(int)
    return [items[i] for i in sorted(set(idx.tolist()))]


def write_gif(run_dir: Path, out: Path, max_frames: int = MAX_GIF_FRAMES) -> Path:
    """The run's filmstrip history as an animated GIF (one frame per epoch, up to max_frames), looping."""
    paths = pick(frames(run_dir), max_frames)
    if not paths:
        raise JobError("this run has no filmstrip yet: a frame is saved when each epoch ends")
    pictures = []
    for p in paths:
        with Image.open(p) as im:
            im.load()
            pictures.append(im.copy() if im.mode == "P" else im.convert("RGB"))
    durations = [FRAME_MS] * (len(pictures) - 1) + [LAST_FRAME_MS]
    pictures[0].save(
        out,
        format="GIF",
        save_all=True,
        append_images=pictures[1:],
        duration=durations,
        loop=0,
        disposal=1,
    )
    return Path(out)


def _fit(a: np.ndarray, nearest: bool) -> np.ndarray:
    """Scale a picture to fit TILE x TILE: masks with crisp pixels, photos smoothly."""
    h, w = a.shape[:2]
    f = TILE / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    if nearest or f > 1:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA
    return np.ascontiguousarray(cv2.resize(np.ascontiguousarray(a), size, interpolation=interp))


_FONTS: dict[int, ImageFont.ImageFont | ImageFont.FreeTypeFont] = {}


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at this size (its bitmap font where Pillow has no FreeType)."""
    if size not in _FONTS:
        try:
            _FONTS[size] = ImageFont.load_default(size)
        except (TypeError, OSError, ImportError):
            _FONTS[size] = ImageFont.load_default()
    return _FONTS[size]
