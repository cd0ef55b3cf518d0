"""segdemo.data.masks: detecting and decoding palette, binary, id and colour-coded masks."""

from __future__ import annotations

import numpy as np
import pytest

from segdemo.data.base import IGNORE, DataError
from segdemo.data.masks import decode_mask, detect_encoding, is_binary_values, summarize_mask

CMAP = [(0, 0, 0), (128, 64, 128), (250, 170, 30)]


def test_detect_palette_keeps_mode_over_values():
    raw = np.array([[0, 255]], np.uint8)  # would be "binary" as grey; P mode says palette
    assert detect_encoding(raw, "P") == "palette"
    assert detect_encoding(raw, "PA") == "palette"


def test_detect_binary_rule():
    assert detect_encoding(np.array([[0, 255, 0]], np.uint8), "L") == "binary"
    assert detect_encoding(np.array([[0, 1, 255]], np.uint8), "L") == "ids"  # 255 is ignore here
    assert detect_encoding(np.array([[0, 0]], np.uint8), "L") == "ids"  # both values must be present
    assert detect_encoding(np.array([[255, 255]], np.uint8), "L") == "ids"
    assert detect_encoding(np.array([[0, 255]], np.uint8), "L", num_classes=3) == "ids"
    assert detect_encoding(np.array([[0, 255]], np.uint8), "L", num_classes=2) == "binary"
    assert is_binary_values([0, 255]) and not is_binary_values([0, 128, 255])


def test_detect_rgb_and_grey_rgb():
    rgb = np.array([[[0, 0, 0], [128, 64, 128]]], np.uint8)
    assert detect_encoding(rgb, "RGB") == "rgb"
    grey = np.repeat(np.array([[[0], [3]]], np.uint8), 3, axis=2)
    assert detect_encoding(grey, "RGB") == "ids"
    # A grey colour that is a class colour (CamVid's Sky is 128,128,128) is read as a colour.
    sky = np.full((1, 2, 3), 128, np.uint8)
    assert detect_encoding(sky, "RGB", colormap=[(128, 128, 128), (128, 0, 0)]) == "rgb"
    assert detect_encoding(sky, "RGB") == "ids"


def test_decode_ids_with_ignore_value():
    raw = np.array([[0, 3, 11, 255]], np.uint8)
    out = decode_mask(raw, "ids", num_classes=11, ignore_value=11)
    assert out.dtype == np.uint8 and out.tolist() == [[0, 3, IGNORE, IGNORE]]


def test_decode_ids_out_of_range_names_file_and_values():
    raw = np.array([[0, 12, 40, 255]], np.uint8)
    with pytest.raises(DataError) as e:
        decode_mask(raw, "ids", num_classes=11, name="masks/0007.png")
    msg = str(e.value)
    assert msg == (
        "labels out of range: found values [12, 40] in masks/0007.png but the classes file has 11 "
        "classes (0..10); add classes or set ignore_index"
    )


def test_decode_16_bit_ids():
    raw = np.array([[0, 2, 255, 1000]], np.int32)
    with pytest.raises(DataError, match=r"\[1000\]"):
        decode_mask(raw, "ids", num_classes=3, name="m.png")
    out = decode_mask(raw, "ids", num_classes=3, ignore_value=1000)
    assert out.dtype == np.uint8 and out.tolist() == [[0, 2, IGNORE, IGNORE]]


def test_decode_binary():
    out = decode_mask(np.array([[0, 255]], np.uint8), "binary", num_classes=2)
    assert out.tolist() == [[0, 1]]
    with pytest.raises(DataError, match=r"m.png holds values \[128\] besides 0 and 255"):
        decode_mask(np.array([[0, 128, 255]], np.uint8), "binary", num_classes=2, name="m.png")


def test_decode_palette_indices_and_ignore():
    raw = np.array([[0, 1, 2, 255]], np.uint8)
    assert decode_mask(raw, "palette", num_classes=3).tolist() == [[0, 1, 2, IGNORE]]
    with pytest.raises(DataError, match=r"found values \[2\]"):
        decode_mask(raw, "palette", num_classes=2)


def test_decode_rgb_lookup_and_ignore_colour():
    raw = np.array([[[0, 0, 0], [128, 64, 128], [250, 170, 30], [255, 255, 255]]], np.uint8)
    out = decode_mask(raw, "rgb", num_classes=3, colormap=CMAP, ignore_color=(255, 255, 255))
    assert out.tolist() == [[0, 1, 2, IGNORE]]


def test_decode_rgb_unknown_colours_listed_up_to_five():
    raw = np.array([[[i, 1, 2] for i in range(10, 17)] + [[0, 0, 0]]], np.uint8)
    with pytest.raises(DataError) as e:
        decode_mask(raw, "rgb", num_classes=3, colormap=CMAP, name="masks/a.png")
    msg = str(e.value)
    assert msg.startswith("masks/a.png has colours that are not class colours: (10, 1, 2), (11, 1, 2)")
    assert "(14, 1, 2) and 2 more" in msg and "(15, 1, 2)" not in msg


def test_decode_rgb_needs_colours_and_a_colour_mask():
    raw = np.zeros((1, 2, 3), np.uint8)
    with pytest.raises(DataError, match="no class colours"):
        decode_mask(raw, "rgb", num_classes=2, name="m.png")
    with pytest.raises(DataError, match="greyscale mask"):
        decode_mask(np.zeros((1, 2), np.uint8), "rgb", num_classes=3, colormap=CMAP, name="m.png")
    colour = np.array([[[1, 2, 3]]], np.uint8)
    with pytest.raises(DataError, match="colour mask"):
        decode_mask(colour, "ids", num_classes=2, name="m.png")


def test_summarize_mask_counts():
    s = summarize_mask(np.array([[0, 0, 3, 255]], np.uint8), "L")
    assert s.kind == "grey" and s.values.tolist() == [0, 3, 255] and s.counts.tolist() == [2, 1, 1]
    s = summarize_mask(np.array([[[1, 2, 3], [1, 2, 3]]], np.uint8), "RGB")
    assert s.kind == "rgb" and s.values.tolist() == [[1, 2, 3]] and s.counts.tolist() == [2]


def test_decode_ids_is_identity_within_range():
    # Seeded random cases rather than hypothesis, which writes a .hypothesis/ folder into the repo.
    rng = np.random.default_rng(0)
    for _ in range(40):
        a = rng.integers(0, 5, tuple(rng.integers(1, 7, 2)), dtype=np.uint8)
        np.testing.assert_array_equal(decode_mask(a, "ids", num_classes=5), a)
        np.testing.assert_array_equal(decode_mask(a, "palette", num_classes=5), a)
