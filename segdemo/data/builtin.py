"""Built-in "shapes" data: procedural, seeded, offline, and decided by shape rather than colour.

Each image is a textured, noisy background with 1-3 shapes (circle, square, triangle) of random
colour, size and rotation that may overlap. A shape's colour says nothing about its class, so a
colour threshold cannot solve it: the net has to learn round vs cornered, three corners vs four.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw

from segdemo.data.base import ArraySource, ClassSet, Splits
from segdemo.data.config import DataConfig

IMAGE_SIZE = 128  # the shapes are drawn at this size; cfg.image_size rescales them in the transforms
CLASSES = ClassSet(
    names=("background", "circle", "square", "triangle"),
    colors=((30, 30, 30), (230, 25, 75), (60, 180, 75), (0, 130, 200)),
)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency colour blotches plus pixel noise, so the background is not one flat colour."""
    coarse = rng.uniform(0, 255, (rng.integers(2, 6), rng.integers(2, 6), 3)).astype(np.float32)
    bg = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC), np.float32)
    return bg + rng.standard_normal((size, size, 3), dtype=np.float32) * 10


def _shape_polygon(rng: np.random.Generator, kind: int, cx: float, cy: float, r: float):
    """Vertices of a rotated square or triangle; None for a circle (drawn as an ellipse)."""
    if kind == 1:
        return None
    n = 4 if kind == 2 else 3
    angle = rng.uniform(0, 2 * np.pi)
    return [(cx + r * np.cos(angle + 2 * np.pi * k / n), cy + r * np.sin(angle + 2 * np.pi * k / n)) for k in range(n)]


def make_sample(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One (image (S,S,3) uint8, mask (S,S) uint8) pair."""
    img = _background(rng, size)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(1, 4)):
        kind = int(rng.integers(1, 4))
        r = rng.uniform(0.12, 0.24) * size * (1.25 if kind == 3 else 1.0)  # triangles: similar area
        cx, cy = rng.uniform(r * 0.6, size - r * 0.6, 2)
        layer = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(layer)
        poly = _shape_polygon(rng, kind, cx, cy, r)
        if poly is None:
            rc = r * 0.85  # similar area to the cornered shapes
            draw.ellipse([cx - rc, cy - rc, cx + rc, cy + rc], fill=1)
        else:
            draw.polygon(poly, fill=1)
        inside = np.asarray(layer, bool)
        # A random colour kept away from the local background so the shape is visible, plus
        # its own shading and noise: colour carries no class information.
        local = img[inside].mean(0) if inside.any() else np.full(3, 128.0)
        color = rng.uniform(0, 255, 3)
        for _ in range(8):
            if np.abs(color - local).sum() > 120:
                break
            color = rng.uniform(0, 255, 3)
        ys, xs = np.nonzero(inside)
        shade = (xs * (50 / size) - 25) * rng.uniform(-1, 1)  # a left-right gradient across the shape
        img[ys, xs] = color + shade[:, None] + rng.normal(0, 10, (len(xs), 3))
        mask[inside] = kind
    return np.clip(img, 0, 255).astype(np.uint8), mask


def make_split(n: int, seed: int, size: int = 128, prefix: str = "shape") -> ArraySource:
    rng = np.random.default_rng(seed)
    pairs = [make_sample(rng, size) for _ in range(n)]
    return ArraySource([p[0] for p in pairs], [p[1] for p in pairs], [f"{prefix}_{i:04d}" for i in range(n)])


@functools.lru_cache(maxsize=2)  # the app's runs mostly ask for the same split: draw it once (bench/README.md)
def _shared_split(n: int, seed: int, size: int, prefix: str) -> ArraySource:
    split = make_split(n, seed, size, prefix)
    for arr in (*split.images, *split.masks):
        arr.setflags(write=False)  # shared by concurrent runs: nobody may draw on it
    return split


def open_builtin(cfg: DataConfig) -> Splits:
    """Same seed, same data; train and val come from separate seed streams so they never overlap."""
    size = IMAGE_SIZE
    train = _shared_split(cfg.builtin_train, cfg.seed * 2 + 1, size, "train")
    val = _shared_split(cfg.builtin_val, cfg.seed * 2 + 2, size, "val")
    return Splits(
        train=train,
        val=val,
        classes=CLASSES,
        description=f"built-in shapes: {len(train)} train / {len(val)} val images, {size}x{size}, "
        f"classes {', '.join(CLASSES.names)}",
    )
