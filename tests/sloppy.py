"""A hasty student's labelled set, made by hand: pet photos whose background is painted on only some of them.

Shared by the engine tests (tests/test_small_data.py) and the browser tests that paint like a hasty student."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from segdemo.data.base import IGNORE

NAMES = ["background", "pet"]
COLORS = [[40, 160, 60], [200, 120, 40]]


def pet_photo(i: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(photo, full true mask): a brown blob (the pet) on green grass noise, seeded by i."""
    rng = np.random.default_rng(1000 + i)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.35, 0.65, 2) * size
    ry, rx = rng.uniform(0.18, 0.28, 2) * size
    pet = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    img = np.empty((size, size, 3), np.float32)
    img[:] = (50, 140, 60)
    img[pet] = (150, 90, 40)
    img += rng.normal(0, 18, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), pet.astype(np.uint8)


def sloppy_mask(truth: np.ndarray, paint_background: bool) -> np.ndarray:
    """A few strokes: the inside of the pet painted pet; the border strip painted background only if asked."""
    m = np.full(truth.shape, IGNORE, np.uint8)
    inner = truth.astype(bool)
    # erode the pet a little: a hasty stroke, not the outline
    core = inner.copy()
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        core &= np.roll(inner, (dy * 2, dx * 2), (0, 1))
    m[core] = 1
    if paint_background:
        m[:8, :] = 0
        m[-8:, :] = 0
    return m


def write_sloppy_set(root: Path, n: int = 6, background_on: tuple[int, ...] = (1, 4)) -> Path:
    """images/ + masks/ + classes.json as the Label tab's zip holds them: background painted on `background_on`."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, truth = pet_photo(i)
        Image.fromarray(img).save(root / "images" / f"photo{i}.png")
        Image.fromarray(sloppy_mask(truth, i in background_on)).save(root / "masks" / f"photo{i}.png")
    (root / "classes.json").write_text(json.dumps({"names": NAMES, "colors": COLORS}))
    return root


def write_fair_set(root: Path, first: int = 100, n: int = 8) -> Path:
    """New photos of the same kind with every pixel labelled: a fair split to judge a run by."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(first, first + n):
        img, truth = pet_photo(i)
        Image.fromarray(img).save(root / "images" / f"photo{i}.png")
        Image.fromarray(truth).save(root / "masks" / f"photo{i}.png")
    (root / "classes.json").write_text(json.dumps({"names": NAMES, "colors": COLORS}))
    return root
