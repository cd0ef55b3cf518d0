"""Small picture helpers for galleries: crisp enlargement of small pictures, panels side by side."""

from __future__ import annotations

import numpy as np


def upscale(a: np.ndarray, min_side: int = 128) -> np.ndarray:
    """Nearest-neighbour enlarge small pictures so the browser shows crisp pixels, not blur."""
    h, w = a.shape[:2]
    f = int(np.ceil(min_side / max(1, min(h, w))))
    if f <= 1:
        return a
    return np.repeat(np.repeat(a, f, axis=0), f, axis=1)


def strip(*panels: np.ndarray, gap: int = 4) -> np.ndarray:
    """Side-by-side panels of the same height with white gaps."""
    h = max(p.shape[0] for p in panels)
    out = []
    for i, p in enumerate(panels):
        if p.ndim == 2:
            p = np.repeat(p[..., None], 3, axis=2)
        if p.shape[0] != h:
            p = np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)), constant_values=255)
        out.append(p)
        if i < len(panels) - 1:
            out.append(np.full((h, gap, 3), 255, np.uint8))
    return np.concatenate(out, axis=1)
