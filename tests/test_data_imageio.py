"""segdemo.imageio: formats, refusals, bombs, truncation, colour modes, EXIF and mask alignment."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from segdemo.data.base import DataError
from segdemo.imageio import (
    ACCEPTED,
    align_mask,
    apply_orientation,
    exif_orientation,
    load_image,
    load_image_oriented,
    load_mask_raw,
    to_rgb,
)


def _rgb(h: int = 6, w: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_with_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR is patched to claim width x height (with a correct CRC)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    b = bytearray(buf.getvalue())
    assert b[12:16] == b"IHDR"
    b[16:24] = struct.pack(">II", width, height)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    return bytes(b)


# -- ordinary images -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,ext", [("PNG", ".png"), ("BMP", ".bmp"), ("TIFF", ".tif"), ("WEBP", ".webp")])
def test_lossless_formats_round_trip(tmp_path, fmt, ext):
    a = _rgb()
    p = tmp_path / f"a{ext}"
    Image.fromarray(a).save(p, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    out = load_image(p)
    assert out.dtype == np.uint8 and out.shape == (6, 8, 3)
    np.testing.assert_array_equal(out, a)


def test_jpeg_and_single_frame_gif(tmp_path):
    a = np.zeros((16, 16, 3), np.uint8)
    a[:, 8:] = (250, 10, 10)
    Image.fromarray(a).save(tmp_path / "a.jpg", quality=95)
    out = load_image(tmp_path / "a.jpg")
    assert out.shape == (16, 16, 3) and out[8, 12, 0] > 200 and out[8, 2, 0] < 40
    Image.fromarray(a).convert("P").save(tmp_path / "a.gif")
    assert load_image(tmp_path / "a.gif").shape == (16, 16, 3)


def test_bytes_and_file_object_sources(tmp_path):
    a = _rgb()
    p = tmp_path / "a.png"
    Image.fromarray(a).save(p)
    np.testing.assert_array_equal(load_image(p.read_bytes()), a)
    with open(p, "rb") as f:
        np.testing.assert_array_equal(load_image(f), a)
    np.testing.assert_array_equal(load_image(str(p)), a)


# -- refusals -------------------------------------------------------------------------------------


def _refused(src, name: str | None = None, **kw) -> str:
    with pytest.raises(DataError) as e:
        load_image(src, name, **kw)
    return str(e.value)


def test_missing_and_empty_files(tmp_path):
    assert "does not exist" in _refused(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    assert "empty.png is empty" in _refused(tmp_path / "empty.png")


@pytest.mark.parametrize(
    "name,content,kind",
    [
        ("page.png", b"<!DOCTYPE html><html><body>404 not found</body></html>", "HTML"),
        ("logo.png", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9"></svg>', "SVG"),
        ("pic.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "EPS"),
        ("doc.png", b"%PDF-1.4\n1 0 obj\n", "PDF"),
        ("noise.png", bytes(range(256)) * 4, None),
    ],
)
def test_non_images_are_refused_with_the_accepted_formats(tmp_path, name, content, kind):
    (tmp_path / name).write_bytes(content)
    msg = _refused(tmp_path / name)
    assert msg.startswith(f"{name} is not a supported image") and ACCEPTED in msg
    if kind:
        assert kind in msg


def test_multi_frame_files_are_refused(tmp_path):
    frames = [Image.new("RGB", (4, 4), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])  # APNG
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    for n in ("anim.gif", "anim.png", "pages.tif"):
        msg = _refused(tmp_path / n)
        assert n in msg and "3 frames" in msg and "single frame" in msg


def test_decompression_bomb_header_is_refused_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_with_size(30000, 30000))
    assert p.stat().st_size < 100
    msg = _refused(p)
    assert "bomb.png" in msg and "900,000,000" in msg and "40,000,000" in msg
    with pytest.raises(DataError, match="900,000,000"):
        load_mask_raw(p)


def test_size_limit_below_pillows_own(tmp_path):
    p = tmp_path / "big.png"
    p.write_bytes(_png_with_size(7000, 7000))  # 49 MP: Pillow would open it; our 40 MP limit refuses
    msg = _refused(p)
    assert "7000x7000" in msg and "40,000,000" in msg
    Image.fromarray(_rgb(100, 100)).save(tmp_path / "ok.png")
    assert "100x100" in _refused(tmp_path / "ok.png", max_pixels=5000)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncated_files(tmp_path, ext):
    p = tmp_path / f"full{ext}"
    Image.fromarray(_rgb(64, 64)).save(p)
    data = p.read_bytes()
    (tmp_path / f"cut{ext}").write_bytes(data[: len(data) // 2])
    msg = _refused(tmp_path / f"cut{ext}")
    assert msg.startswith(f"cut{ext} is truncated or corrupt") and "re-export it" in msg


def test_corrupt_png_data(tmp_path):
    p = tmp_path / "a.png"
    Image.fromarray(_rgb(64, 64)).save(p)
    b = bytearray(p.read_bytes())
    i = b.index(b"IDAT") + 8
    b[i : i + 40] = bytes(40)  # zero out compressed pixel data
    (tmp_path / "bad.png").write_bytes(bytes(b))
    assert "bad.png is truncated or corrupt" in _refused(tmp_path / "bad.png")


def test_custom_name_is_used_in_messages(tmp_path):
    (tmp_path / "x.png").write_bytes(b"<html></html>")
    assert _refused(tmp_path / "x.png", name="images/0003.png").startswith("images/0003.png ")


# -- colour modes ---------------------------------------------------------------------------------


def test_mode_1_L_P(tmp_path):
    Image.new("1", (3, 2), 1).save(tmp_path / "one.png")
    assert (load_image(tmp_path / "one.png") == 255).all()
    Image.new("L", (3, 2), 77).save(tmp_path / "l.png")
    np.testing.assert_array_equal(load_image(tmp_path / "l.png")[0, 0], [77, 77, 77])
    p = Image.new("P", (3, 2), 1)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_image(tmp_path / "p.png")[1, 2], [10, 200, 30])


def test_alpha_is_composited_on_white(tmp_path):
    a = np.zeros((1, 3, 4), np.uint8)
    a[0, 0] = (255, 0, 0, 255)  # opaque red stays red
    a[0, 1] = (0, 0, 0, 0)  # fully transparent black becomes white
    a[0, 2] = (0, 0, 0, 128)  # half-transparent black becomes mid grey
    Image.fromarray(a, "RGBA").save(tmp_path / "rgba.png")
    out = load_image(tmp_path / "rgba.png")
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    assert 120 <= out[0, 2, 0] <= 135
    Image.new("LA", (2, 2), (10, 0)).save(tmp_path / "la.png")
    assert (load_image(tmp_path / "la.png") == 255).all()
    pa = Image.new("P", (2, 1), 0)
    pa.putpalette([9, 9, 9, 200, 0, 0] + [0] * 762)
    pa.putpixel((1, 0), 1)
    pa.info["transparency"] = 0
    pa.save(tmp_path / "ptrans.png", transparency=0)
    out = load_image(tmp_path / "ptrans.png")
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [200, 0, 0]])


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (4, 4), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    out = load_image(tmp_path / "c.jpg")
    assert out.shape == (4, 4, 3) and out.min() > 245  # no ink is white


def test_16_bit_scales_by_257_without_clipping(tmp_path):
    a = np.array([[0, 65535, 32768, 300, 514]], np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = load_image(tmp_path / "g16.png")[0, :, 0]
    np.testing.assert_array_equal(out, [0, 255, 128, 1, 2])  # 300 -> 1, not clipped to 255
    big = Image.frombytes("I;16B", (2, 1), struct.pack(">HH", 65535, 257))
    np.testing.assert_array_equal(to_rgb(big)[0, :, 0], [255, 1])


def test_32_bit_and_float_stretch_by_own_range(tmp_path):
    i = Image.fromarray(np.array([[0, 50_000, 100_000]], np.int32), "I")
    i.save(tmp_path / "i.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "i.tif")[0, :, 0], [0, 128, 255])
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
    f.save(tmp_path / "f.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "f.tif")[0, :, 0], [0, 128, 255])
    f2 = Image.fromarray(np.array([[-10.0, 0.0, 10.0]], np.float32), "F")
    np.testing.assert_array_equal(to_rgb(f2)[0, :, 0], [0, 128, 255])


def test_ycbcr_converts():
    im = Image.new("YCbCr", (2, 2), (200, 128, 128))  # neutral chroma: grey
    out = to_rgb(im)
    assert out.shape == (2, 2, 3) and np.abs(out.astype(int) - 200).max() <= 1


# -- EXIF orientation -----------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_apply_orientation_matches_pillow(orientation):
    a = _rgb(3, 5, seed=orientation)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(im))
    np.testing.assert_array_equal(apply_orientation(a, orientation), expected)


def _rotated_jpeg(path: Path, orientation: int = 6) -> None:
    """A 60x40 (WxH) stored photo, left half red, right half blue, tagged with an EXIF orientation."""
    a = np.zeros((40, 60, 3), np.uint8)
    a[:, :30] = (255, 0, 0)
    a[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(a).save(path, exif=exif, quality=95)


def test_exif_rotated_jpeg_is_turned_upright(tmp_path):
    p = tmp_path / "phone.jpg"
    _rotated_jpeg(p, 6)
    assert exif_orientation(p) == 6
    img, orientation = load_image_oriented(p)
    assert orientation == 6 and img.shape == (60, 40, 3)  # portrait after turning 90 degrees clockwise
    assert img[5, 20, 0] > 200 and img[55, 20, 2] > 200  # the left (red) half is now on top


def test_exif_orientation_of_plain_and_broken_files(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    assert exif_orientation(tmp_path / "a.png") == 1
    (tmp_path / "b.png").write_bytes(b"junk")
    assert exif_orientation(tmp_path / "b.png") == 1


def test_align_mask_rules():
    upright = (60, 40)  # image after an orientation-6 turn
    stored_mask = np.zeros((40, 60), np.uint8)
    stored_mask[:, :30] = 1  # drawn on the stored (landscape) pixels: left half
    turned = align_mask(stored_mask, upright, 6, mask_name="m.png", image_name="i.jpg")
    assert turned.shape == (60, 40) and (turned[:30] == 1).all() and (turned[30:] == 0).all()
    already = np.zeros((60, 40), np.uint8)
    assert align_mask(already, upright, 6, mask_name="m.png", image_name="i.jpg") is already
    with pytest.raises(DataError) as e:
        align_mask(np.zeros((10, 10), np.uint8), upright, 6, mask_name="masks/m.png", image_name="images/i.jpg")
    msg = str(e.value)
    assert msg.startswith("masks/m.png is 10x10 but images/i.jpg is 40x60") and "EXIF" in msg
    with pytest.raises(DataError, match="masks must match their image's size"):
        align_mask(np.zeros((5, 5), np.uint8), (6, 6), 1, mask_name="m", image_name="i")


# -- masks ----------------------------------------------------------------------------------------


def test_mask_raw_keeps_palette_indices(tmp_path):
    idx = np.array([[0, 1, 2, 255]], np.uint8)
    p = Image.fromarray(idx, "P")
    pal = [0, 0, 0, 7, 7, 7, 200, 10, 10] + [0] * (253 * 3 - 3) + [255, 255, 255]
    p.putpalette(pal)
    p.save(tmp_path / "m.png")
    raw, mode = load_mask_raw(tmp_path / "m.png")
    assert mode == "P" and raw.dtype == np.uint8
    np.testing.assert_array_equal(raw, idx)


def test_mask_raw_modes(tmp_path):
    Image.fromarray(np.array([[0, 3, 11]], np.uint8)).save(tmp_path / "l.png")
    raw, mode = load_mask_raw(tmp_path / "l.png")
    assert mode == "L" and raw.tolist() == [[0, 3, 11]]
    Image.fromarray(np.array([[0, 1000, 65535]], np.uint16)).save(tmp_path / "i16.png")
    raw, mode = load_mask_raw(tmp_path / "i16.png")
    assert mode.startswith("I") and raw.dtype == np.int32 and raw.tolist() == [[0, 1000, 65535]]
    rgba = np.array([[[1, 2, 3, 0], [4, 5, 6, 255]]], np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    raw, mode = load_mask_raw(tmp_path / "rgba.png")
    assert mode == "RGBA" and raw.shape == (1, 2, 3) and raw.tolist() == [[[1, 2, 3], [4, 5, 6]]]
    Image.new("1", (2, 1), 1).save(tmp_path / "one.png")
    assert load_mask_raw(tmp_path / "one.png")[0].tolist() == [[255, 255]]


def test_mask_raw_does_not_apply_exif(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "m.png", exif=exif)
    assert load_mask_raw(tmp_path / "m.png")[0].shape == (4, 6)


def test_mask_raw_refuses_bad_files(tmp_path):
    (tmp_path / "m.png").write_text("<html></html>")
    with pytest.raises(DataError, match="m.png is not a supported image"):
        load_mask_raw(tmp_path / "m.png")
    f = Image.fromarray(np.array([[0.5, 1.0]], np.float32), "F")
    f.save(tmp_path / "f.tif")
    with pytest.raises(DataError, match="fractional"):
        load_mask_raw(tmp_path / "f.tif")
