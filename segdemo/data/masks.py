"""Mask encodings: how label files store classes, and decoding them to uint8 ids with IGNORE.

- "palette": a P-mode PNG/GIF; the palette INDEX is the class (the colours are only for display),
  and index 255 is ignore, as in Pascal VOC.
- "binary": a greyscale mask whose values are exactly {0, 255} (both present): 0 is background
  (class 0) and 255 foreground (class 1). A mask with {0, 1, 255} is "ids" with 255 as ignore.
- "ids": greyscale values are class ids; 255 is ignore, and so is the dataset's ignore_index.
- "rgb": colour-coded masks; each class has one exact colour (the classes file's "colors").
  A 3-channel mask that is grey everywhere (R == G == B) is read as "ids" from one channel,
  unless a colour list is given and every colour in it is in that list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from segdemo.data.base import IGNORE, DataError

ENCODINGS = ("palette", "binary", "ids", "rgb")
Color = tuple[int, int, int]


def color_keys(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours -> int32 keys r<<16 | g<<8 | b (one number per colour)."""
    rgb = np.asarray(rgb)
    return (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2].astype(np.int32)


def key_to_color(key: int) -> Color:
    return (int(key) >> 16 & 255, int(key) >> 8 & 255, int(key) & 255)


def is_grey(raw: np.ndarray) -> bool:
    """True for a 3-channel array whose channels are equal everywhere."""
    return raw.ndim == 3 and bool(np.array_equal(raw[..., 0], raw[..., 1]) and np.array_equal(raw[..., 0], raw[..., 2]))


def is_binary_values(values: Sequence[int] | np.ndarray, num_classes: int | None = None) -> bool:
    """The binary rule: values exactly {0, 255}, and no class list that says otherwise."""
    s = {int(v) for v in np.asarray(values).ravel().tolist()}
    return s == {0, 255} and num_classes in (None, 2)


def _unique(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique values and their counts; bincount is much faster than sorting for uint8."""
    if a.dtype == np.uint8:
        counts = np.bincount(a.ravel(), minlength=256)
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(a, return_counts=True)


@dataclass
class MaskSummary:
    """What one mask file holds, without keeping its pixels: kind, unique values and their counts."""

    kind: str  # "palette", "grey" or "rgb"
    shape: tuple[int, int]  # (H, W) as stored
    values: np.ndarray  # (N,) label values, or (N, 3) colours for "rgb"
    counts: np.ndarray  # (N,) pixels per value


def _all_known(raw: np.ndarray, colormap: Sequence[Color], ignore_color: Color | None) -> bool:
    known = {c[0] << 16 | c[1] << 8 | c[2] for c in colormap}
    if ignore_color is not None:
        known.add(ignore_color[0] << 16 | ignore_color[1] << 8 | ignore_color[2])
    return set(np.unique(color_keys(raw)).tolist()) <= known


def summarize_mask(
    raw: np.ndarray, mode: str, colormap: Sequence[Color] | None = None, ignore_color: Color | None = None
) -> MaskSummary:
    """Reduce a raw mask (from load_mask_raw) to its kind and value histogram."""
    shape = (int(raw.shape[0]), int(raw.shape[1]))
    if mode in ("P", "PA"):
        return MaskSummary("palette", shape, *_unique(raw))
    if raw.ndim == 3:
        if (colormap and _all_known(raw, colormap, ignore_color)) or not is_grey(raw):
            keys, counts = np.unique(color_keys(raw), return_counts=True)
            return MaskSummary("rgb", shape, np.array([key_to_color(k) for k in keys], np.uint8).reshape(-1, 3), counts)
        raw = raw[..., 0]
    return MaskSummary("grey", shape, *_unique(raw))


def detect_encoding(
    raw: np.ndarray, mode: str, num_classes: int | None = None, colormap: Sequence[Color] | None = None
) -> str:
    """One of ENCODINGS for a single raw mask (the folder source decides "binary" over all masks)."""
    s = summarize_mask(raw, mode, colormap)
    if s.kind == "grey":
        return "binary" if is_binary_values(s.values, num_classes) else "ids"
    return s.kind


def _fmt_values(values: Sequence[int], cap: int = 10) -> str:
    shown = ", ".join(str(int(v)) for v in values[:cap])
    return f"[{shown}{', ...' if len(values) > cap else ''}]"


def _check_range(ids: np.ndarray, num_classes: int, name: str, classes_from: str) -> None:
    values = _unique(ids)[0]
    bad = [int(v) for v in values if v != IGNORE and not 0 <= v < num_classes]
    if bad:
        raise DataError(
            f"labels out of range: found values {_fmt_values(bad)} in {name} but {classes_from} has "
            f"{num_classes} classes (0..{num_classes - 1}); add classes or set ignore_index"
        )


def decode_mask(
    raw: np.ndarray,
    encoding: str,
    *,
    num_classes: int,
    colormap: Sequence[Color] | None = None,
    ignore_value: int | None = None,
    ignore_color: Color | None = None,
    name: str = "mask",
    classes_from: str = "the classes file",
) -> np.ndarray:
    """Raw label array -> (H, W) uint8 class ids 0..num_classes-1 with IGNORE; DataError names the file."""
    if encoding == "rgb":
        return _decode_rgb(raw, colormap, ignore_color, name)
    if raw.ndim == 3:
        if not is_grey(raw):
            raise DataError(
                f"{name} is a colour mask but is being read as {encoding} labels; give the class "
                'colours in the classes file ("colors") or save the mask as greyscale ids'
            )
        raw = raw[..., 0]
    if encoding == "binary":
        values = _unique(raw)[0]
        stray = [int(v) for v in values if v not in (0, 255)]
        if stray:
            raise DataError(
                f"{name} holds values {_fmt_values(stray)} besides 0 and 255; a black-and-white mask "
                "must be pure 0/255 (no anti-aliasing, no JPEG)"
            )
        return (raw == 255).astype(np.uint8)
    if encoding not in ("ids", "palette"):
        raise ValueError(f"unknown mask encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    if raw.dtype == np.uint8:
        lut = np.arange(256, dtype=np.uint8)
        if ignore_value is not None and 0 <= ignore_value <= 255:
            lut[ignore_value] = IGNORE
        ids = lut[raw]
        _check_range(ids, num_classes, name, classes_from)
        return ids
    a = raw.astype(np.int64)
    if ignore_value is not None:
        a[a == ignore_value] = IGNORE
    _check_range(a, num_classes, name, classes_from)
    return a.astype(np.uint8)


def _decode_rgb(raw: np.ndarray, colormap: Sequence[Color] | None, ignore_color: Color | None, name: str) -> np.ndarray:
    if raw.ndim != 3:
        raise DataError(
            f"{name} is a greyscale mask but the classes are colour-coded; save it with the "
            'class colours or remove "colors" from the classes file'
        )
    if not colormap:
        raise DataError(
            f'{name} is a colour-coded mask but no class colours are known; add "colors" '
            "(one [r, g, b] per class) to the classes file"
        )
    table = {c[0] << 16 | c[1] << 8 | c[2]: i for i, c in enumerate(colormap)}
    if ignore_color is not None:
        table[ignore_color[0] << 16 | ignore_color[1] << 8 | ignore_color[2]] = IGNORE
    keys, inverse = np.unique(color_keys(raw), return_inverse=True)
    unknown = [k for k in keys.tolist() if k not in table]
    if unknown:
        shown = ", ".join(str(key_to_color(k)) for k in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise DataError(
            f'{name} has colours that are not class colours: {shown}{more}; add them to "colors" '
            "in the classes file or repaint the mask (anti-aliased edges and JPEG masks cause this)"
        )
    lut = np.array([table[k] for k in keys.tolist()], np.uint8)
    return lut[inverse.reshape(raw.shape[:2])]
