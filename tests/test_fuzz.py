"""Bounded fuzzing of the image and zip readers: any bytes give an array or a DataError, nothing else,
and nothing lands outside the destination folder."""

import io
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from segdemo.data.base import DataError
from segdemo.data.zipdata import extract_zip
from segdemo.imageio import load_image, load_mask_raw

FUZZ = settings(
    max_examples=500,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _encoded(fmt: str, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    a = np.random.default_rng(0).integers(0, 255, (24, 20, 3), dtype=np.uint8)
    Image.fromarray(a).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


SEEDS = [
    _encoded("PNG"),
    _encoded("JPEG"),
    _encoded("PNG", "P"),
    _encoded("GIF"),
    _encoded("BMP"),
    _encoded("TIFF"),
    _encoded("WEBP"),
]


def mutated(seeds):
    """A valid file with some bytes overwritten, a piece cut out, or its tail cut off."""
    return st.tuples(
        st.sampled_from(seeds),
        st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
        st.integers(0, 10**6),
        st.booleans(),
    ).map(_mutate)


def _mutate(t):
    data, flips, cut, truncate = t
    b = bytearray(data)
    for pos, val in flips:
        b[pos % len(b)] = val
    if truncate:
        b = b[: cut % len(b)]
    return bytes(b)


@FUZZ
@given(st.one_of(mutated(SEEDS), st.binary(max_size=2048)))
@pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")  # mangled TIFFs: Pillow says so, then we refuse
def test_image_reader_never_crashes(data):
    for reader in (load_image, lambda d, name: load_mask_raw(d, name)[0]):
        try:
            out = reader(data, name="fuzz.png")
        except DataError as e:
            assert "fuzz.png" in str(e)  # the message names the file
            continue
        assert isinstance(out, np.ndarray) and out.dtype in (np.uint8, np.int32, np.uint16, np.int64)
        assert out.shape[0] > 0 and out.shape[1] > 0


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(3):
            z.writestr(f"ds/images/{i}.png", _encoded("PNG"))
            z.writestr(f"ds/masks/{i}.png", _encoded("PNG", "L"))
    return buf.getvalue()


ZIP = _zip_bytes()


@FUZZ
@given(mutated([ZIP]))
def test_zip_reader_never_crashes_or_escapes(tmp_path_factory, data):
    base = tmp_path_factory.mktemp("z")
    src = base / "upload.zip"
    src.write_bytes(data)
    dest = base / "run" / "data"
    try:
        root = extract_zip(src, dest, max_total_bytes=1_000_000)
        assert root.resolve().is_relative_to(dest.resolve())
    except DataError as e:
        assert "upload.zip" in str(e) or str(dest) in str(e)
    written = {p for p in base.rglob("*")}
    outside = [p for p in written if p != src and not p.is_relative_to(base / "run")]
    assert outside == []


def test_seeds_are_valid():
    for s in SEEDS:
        assert load_image(s, name="seed").shape == (24, 20, 3)
