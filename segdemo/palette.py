"""Class colours that stay distinct however many classes there are: 20 hand-picked ones, then each next colour
the one farthest (in CIELAB, where distance follows what eyes see) from every colour already taken."""

from __future__ import annotations

import functools

import numpy as np

# Distinct colours for the first classes (first is background-dark); the rest are computed.
HAND_PICKED = (
    (20, 20, 20),
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
)
RESERVED = ((255, 255, 255),)  # white draws ignored pixels (ClassSet.palette): no class may look like it


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB 0..255 -> CIELAB (D65), float64."""
    c = np.asarray(rgb, np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = c @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


@functools.lru_cache(maxsize=8)
def distinct_colors(n: int) -> tuple[tuple[int, int, int], ...]:
    """n colours: HAND_PICKED first, then greedily the candidate (a 16-level RGB grid) whose smallest CIELAB
    distance to every colour taken so far (and to RESERVED) is largest. Deterministic: class k keeps its
    colour whatever n is. Beyond 256 (more than a uint8 mask holds; ClassSet refuses them) colours repeat."""
    if n > 256:
        first = distinct_colors(256)
        return tuple(first[i % 256] for i in range(n))
    chosen: list[tuple[int, int, int]] = [(int(c[0]), int(c[1]), int(c[2])) for c in HAND_PICKED[:n]]
    if n <= len(chosen):
        return tuple(chosen)
    levels = np.linspace(0, 255, 16).round().astype(int)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    lab = to_lab(grid)
    nearest = np.full(len(grid), np.inf)
    for c in [*RESERVED, *chosen]:
        nearest = np.minimum(nearest, np.linalg.norm(lab - to_lab(np.array(c)), axis=1))
    while len(chosen) < n:
        j = int(nearest.argmax())
        chosen.append((int(grid[j][0]), int(grid[j][1]), int(grid[j][2])))
        nearest = np.minimum(nearest, np.linalg.norm(lab - lab[j], axis=1))
    return tuple(chosen)
