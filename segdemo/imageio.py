"""Safe image and mask reading shared by the data sources and prediction.

Every file is opened with Pillow restricted to a few raster formats, its header size is checked
before any pixel is decoded, and it is decoded fully inside a try so that a bad file becomes one
DataError sentence that names it. Conversions (documented here, tested in tests/test_data_imageio.py):

- Alpha (LA, PA, RGBA, P with transparency) is composited onto WHITE, the way viewers show
  transparent cut-outs, so hidden colour under alpha 0 never reaches the model.
- 16-bit images (I;16, I;16B, I;16L, and mode I with values inside 0..65535) are divided by 257
  and rounded, so 0 -> 0, 32768 -> 128 and 65535 -> 255, and nothing is clipped. Mode I with
  values outside 0..65535, and float (F) images, are stretched from their own min..max (F images
  already inside 0..1 are multiplied by 255).
- EXIF orientation is applied to images (load_image) but never to masks (load_mask_raw): masks
  follow their image through align_mask.
"""

from __future__ import annotations

import io
import logging
import os
import re
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from segdemo.errors import DataError  # not segdemo.data: data/ imports this module

log = logging.getLogger(__name__)

MAX_PIXELS = 40_000_000
# Pillow format names Image.open may try (camera JPEGs come back as format "MPO", which is fine).
PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF")
ACCEPTED = "PNG, JPEG, BMP, TIFF, WEBP and single-frame GIF"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"})

# EXIF orientation -> numpy transform of an (H, W, ...) array; same table as PIL.ImageOps.exif_transpose.
_ORIENT = {
    2: lambda a: a[:, ::-1],  # mirror left-right
    3: lambda a: a[::-1, ::-1],  # rotate 180
    4: lambda a: a[::-1, :],  # mirror top-bottom
    5: lambda a: a.swapaxes(0, 1),  # transpose
    6: lambda a: np.rot90(a, -1),  # rotate 90 clockwise
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),  # transverse
    8: lambda a: np.rot90(a, 1),  # rotate 90 counter-clockwise
}
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, IndexError, TypeError, KeyError)

Source = str | os.PathLike | bytes | BinaryIO
# Magic numbers of the accepted formats: such a file that Pillow cannot open is damaged, not foreign.
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def _display_name(src: Source, name: str | None) -> str:
    if name:
        return name
    if isinstance(src, (str, os.PathLike)):
        return Path(src).name
    return Path(str(getattr(src, "name", "image"))).name or "image"


def _sniff(head: bytes) -> str | None:
    """Name a common non-image file type from its first bytes, for a friendlier refusal."""
    h = head.lstrip().lower()
    if head.startswith(b"%!PS") or head.startswith(b"\xc5\xd0\xd3\xc6"):
        return "PostScript/EPS"
    if head.startswith(b"%PDF"):
        return "PDF"
    if b"<svg" in h[:1024]:
        return "SVG"
    if h.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "HTML"
    if h.startswith(b"<?xml") or h.startswith(b"<"):
        return "XML/HTML text"
    if head.startswith(b"PK\x03\x04"):
        return "zip archive"
    return None


def _open(src: Source, name: str, max_pixels: int) -> tuple[Image.Image, BinaryIO]:
    """Open the header only, refuse unsupported formats, animations and oversize images."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        fp: BinaryIO = io.BytesIO(bytes(src))
    elif isinstance(src, (str, os.PathLike)):
        try:
            fp = open(src, "rb")  # closed by the caller, or below on a refusal
        except FileNotFoundError:
            raise DataError(f"{name} does not exist; check the path") from None
        except OSError as e:
            raise DataError(f"{name} could not be read ({e.strerror}); check the file") from None
    else:
        fp = src if src.seekable() else io.BytesIO(src.read())
    try:
        start = fp.tell()
        head = fp.read(1024)
        fp.seek(start)
        if not head:
            raise DataError(f"{name} is empty; re-export it")
        try:
            im = Image.open(fp, formats=PIL_FORMATS)
        except Image.DecompressionBombError as e:
            m = re.search(r"\((\d+) pixels\)", str(e))
            size = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
            raise DataError(
                f"{name} claims {size}, more than the limit of {max_pixels:,} pixels; resize it before using it"
            ) from None
        except Image.UnidentifiedImageError:
            if head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
                raise DataError(f"{name} is truncated or corrupt (its header is damaged); re-export it") from None
            kind = _sniff(head)
            what = f"it looks like {kind}" if kind else "unknown or unsupported format"
            raise DataError(f"{name} is not a supported image ({what}); save it as one of {ACCEPTED}") from None
        except Image.DecompressionBombWarning as e:  # only raised when warnings are turned into errors
            raise DataError(f"{name} is too large to open safely ({e}); resize it before using it") from None
        except _DECODE_ERRORS as e:
            raise DataError(f"{name} is truncated or corrupt ({e}); re-export it") from None
        w, h = im.size
        if w < 1 or h < 1:
            raise DataError(f"{name} has an empty size {w}x{h}; re-export it")
        if w * h > max_pixels:
            raise DataError(
                f"{name} is {w}x{h} pixels ({w * h:,}), more than the limit of {max_pixels:,} "
                "pixels; resize it before using it"
            )
        try:
            frames = getattr(im, "n_frames", 1) if im.format != "MPO" else 1  # MPO: frame 0 is the photo
            im.seek(0)  # counting GIF frames reads through the file
        except _DECODE_ERRORS as e:
            raise DataError(f"{name} is truncated or corrupt ({e}); re-export it") from None
        if frames > 1:
            raise DataError(
                f"{name} is an animation or multi-page file with {frames} frames; save a single "
                f"frame as one of {ACCEPTED}"
            )
        return im, fp
    except BaseException:
        if fp is not src:
            fp.close()
        raise


def _decode(src: Source, name: str, max_pixels: int) -> tuple[Image.Image, int]:
    """Open and fully decode; return the image and its EXIF orientation (1 when absent)."""
    im, fp = _open(src, name, max_pixels)
    try:
        try:
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DataError(f"{name} is too large to decode safely ({e}); resize it before using it") from None
        except _DECODE_ERRORS as e:
            raise DataError(f"{name} is truncated or corrupt ({e}); re-export it") from None
        return im, _orientation(im)  # after load(): PNG's getexif() decodes and would hide a decode error
    finally:
        if fp is not src:
            fp.close()


def _orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(0x0112, 1))
    except Exception:  # broken EXIF must not make a readable image unreadable
        log.debug("ignoring unreadable EXIF", exc_info=True)
        return 1
    return value if value in _ORIENT else 1


def exif_orientation(src: Source) -> int:
    """The EXIF orientation tag (1..8) of an image file; 1 when absent, broken or unreadable."""
    start = src.tell() if hasattr(src, "tell") else None
    try:
        im, fp = _open(src, _display_name(src, None), MAX_PIXELS)
    except DataError:
        return 1
    try:
        return _orientation(im)
    finally:
        if fp is not src:
            fp.close()
        elif start is not None:
            fp.seek(start)  # leave a caller's file object where it was


def apply_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """Turn a stored (H, W, ...) array upright for an EXIF orientation (as ImageOps.exif_transpose)."""
    f = _ORIENT.get(orientation)
    return a if f is None else np.ascontiguousarray(f(a))


def _scale16(a: np.ndarray) -> np.ndarray:
    return np.rint(a.astype(np.float64) / 257.0).astype(np.uint8)


def _stretch(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.rint((np.nan_to_num(a, nan=lo) - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def to_rgb(im: Image.Image) -> np.ndarray:
    """Any decoded Pillow image -> (H, W, 3) uint8 RGB (see the module docstring for the rules)."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.int64)
        grey = _scale16(a) if a.size == 0 or (a.min() >= 0 and a.max() <= 65535) else _stretch(a)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        a = np.asarray(im, np.float64)
        finite = a[np.isfinite(a)]
        if finite.size and finite.min() >= 0 and finite.max() <= 1:
            grey = np.rint(np.nan_to_num(a) * 255).astype(np.uint8)
        else:
            grey = _stretch(a)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "P" and "transparency" in im.info:
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("LA", "PA", "RGBA", "La", "RGBa"):
        rgba = im.convert("RGBA")  # also un-premultiplies La/RGBa
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    if mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, np.uint8)


def load_image_oriented(src: Source, name: str | None = None, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, int]:
    """Upright (H, W, 3) uint8 RGB plus the EXIF orientation that was applied (1 = none)."""
    label = _display_name(src, name)
    im, orientation = _decode(src, label, max_pixels)
    try:
        rgb = to_rgb(im)
    except (OSError, ValueError) as e:
        raise DataError(
            f"{label} uses colour mode {im.mode} that cannot be converted to RGB ({e}); re-save it as RGB"
        ) from None
    return apply_orientation(rgb, orientation), orientation


def load_image(src: Source, name: str | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file (path, bytes or file object) as upright (H, W, 3) uint8 RGB."""
    return load_image_oriented(src, name, max_pixels)[0]


def load_mask_raw(src: Source, name: str | None = None, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Raw label array and Pillow mode: P keeps palette indices, L values, I;16 int32, RGB(A) (H, W, 3)."""
    label = _display_name(src, name)
    im, _ = _decode(src, label, max_pixels)
    mode = im.mode
    if mode in ("P", "L"):
        return np.array(im, np.uint8), mode  # np.array of a P image gives indices, never colours
    if mode in ("PA", "LA"):
        return np.array(im.getchannel(0), np.uint8), mode  # the alpha of a label map carries no label
    if mode == "1":
        return np.array(im.convert("L"), np.uint8), mode  # 0/255, read as a binary mask
    if mode.startswith("I;16") or mode == "I":
        return np.asarray(im).astype(np.int32), mode
    if mode == "F":
        a = np.asarray(im, np.float64)
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise DataError(f"{label} holds fractional label values; save the mask with whole class numbers")
        return a.astype(np.int32), mode
    if mode in ("RGB", "RGBA", "RGBX", "RGBa"):
        return np.array(im.convert("RGB") if mode != "RGB" else im, np.uint8), mode
    try:
        return np.array(im.convert("RGB"), np.uint8), mode
    except (OSError, ValueError) as e:
        raise DataError(
            f"{label} uses colour mode {mode} that cannot be read as a mask ({e}); "
            "save it as a greyscale or palette PNG"
        ) from None


def load_rgba(src: Source, name: str | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """(H, W, 4) uint8 RGBA exactly as stored, alpha kept and no EXIF turn: a layer painted in the browser,
    whose transparent pixels mean "not painted" (segdemo/server/labelset.py)."""
    label = _display_name(src, name)
    im, _ = _decode(src, label, max_pixels)
    try:
        return np.array(im.convert("RGBA"), np.uint8)
    except (OSError, ValueError) as e:
        raise DataError(f"{label} uses colour mode {im.mode} that cannot be read as RGBA ({e}); re-save it") from None


def _wh(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}"


def mask_alignment(mask_shape: tuple[int, ...], image_shape: tuple[int, ...], orientation: int) -> str | None:
    """How a mask fits its upright image: "transpose" (give it the EXIF turn), "as_is", or None (mismatch).

    image_shape is the upright (H, W) after EXIF. A mask with the image's stored (unrotated) size was
    drawn on the stored pixels and gets the same transpose; a mask that already has the upright size
    is used as is. For orientations that keep the size (mirrors, 180, square images) the first rule wins.
    """
    upright = tuple(image_shape[:2])
    stored = upright[::-1] if orientation in (5, 6, 7, 8) else upright
    if orientation != 1 and tuple(mask_shape[:2]) == stored:
        return "transpose"
    return "as_is" if tuple(mask_shape[:2]) == upright else None


def mismatch_message(
    mask_name: str,
    mask_shape: tuple[int, ...],
    image_name: str,
    image_shape: tuple[int, ...],
    orientation: int,
) -> str:
    upright = tuple(image_shape[:2])
    stored = upright[::-1] if orientation in (5, 6, 7, 8) else upright
    extra = f" ({_wh(stored)} as stored, before its EXIF rotation)" if stored != upright else ""
    return (
        f"{mask_name} is {_wh(mask_shape)} but {image_name} is {_wh(upright)}{extra}: "
        "masks must match their image's size"
    )


def align_mask(
    mask: np.ndarray, image_shape: tuple[int, ...], orientation: int, *, mask_name: str, image_name: str
) -> np.ndarray:
    """Fit a mask to its upright image (see mask_alignment), or raise DataError; never misalign silently."""
    how = mask_alignment(mask.shape, image_shape, orientation)
    if how == "transpose":
        return apply_orientation(mask, orientation)
    if how == "as_is":
        return mask
    raise DataError(mismatch_message(mask_name, mask.shape, image_name, image_shape, orientation))
