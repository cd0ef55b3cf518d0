"""segdemo.data.folder and open_dataset: pairing, splits, classes files, encodings, EXIF and errors."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdemo.core.config import DataConfig
from segdemo.data import open_dataset, parse_source
from segdemo.data.base import IGNORE, DataError
from segdemo.data.folder import open_folder, read_classes_file
from tests.conftest import CAMVID_NAMES

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CAMVID = SHARED / "camvid"


def _pair(
    root: Path,
    stem: str,
    value: int,
    *,
    size=(8, 6),
    img_ext=".png",
    mask_ext=".png",
    mask: np.ndarray | None = None,
) -> None:
    """An image filled with colour (value*20, 5, 5) and a mask filled with value: pairs prove alignment."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    w, h = size
    Image.new("RGB", (w, h), (value * 20, 5, 5)).save(root / "images" / f"{stem}{img_ext}", quality=95)
    m = np.full((h, w), value, np.uint8) if mask is None else mask
    Image.fromarray(m).save(root / "masks" / f"{stem}{mask_ext}")


def _loaded_values(src) -> dict[str, tuple[int, int]]:
    """name -> (image red / 20 rounded, mask value) for every pair."""
    out = {}
    for i in range(len(src)):
        img, m = src.load(i)
        out[src.name(i)] = (round(int(img[0, 0, 0]) / 20), int(m[0, 0]))
    return out


def test_pairs_by_stem_with_a_gap_in_the_middle(tmp_path):
    for k, stem in enumerate(["a", "b", "c", "d"], start=1):
        _pair(tmp_path, stem, k)
    (tmp_path / "masks" / "b.png").unlink()  # image b has no mask
    Image.new("L", (8, 6), 5).save(tmp_path / "masks" / "e.png")  # mask e has no image
    (tmp_path / "images" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "images" / "README.txt").write_text("not an image")
    splits = open_folder(tmp_path, DataConfig(val_fraction=0.34))
    both = {**_loaded_values(splits.train), **_loaded_values(splits.val)}
    assert both == {"a": (1, 1), "c": (3, 3), "d": (4, 4)}  # b skipped, e skipped, nothing shifted
    assert any("2 files without a partner" in n for n in splits.notes)


def test_jpeg_image_with_png_mask_and_case_sensitive_stems(tmp_path):
    _pair(tmp_path, "x1", 1, img_ext=".jpg")
    _pair(tmp_path, "x2", 2, img_ext=".JPEG")
    _pair(tmp_path, "Y3", 3)
    (tmp_path / "masks" / "Y3.png").rename(tmp_path / "masks" / "y3.png")  # differs only in case: not paired
    splits = open_folder(tmp_path, DataConfig())
    names = sorted(
        [splits.train.name(i) for i in range(len(splits.train))] + [splits.val.name(i) for i in range(len(splits.val))]
    )
    assert names == ["x1", "x2"]


def test_train_val_test_folders(tmp_path):
    for split, n in (("train", 3), ("val", 2), ("test", 1)):
        for i in range(n):
            _pair(tmp_path / split, f"{split}{i}", i + 1)
    splits = open_folder(tmp_path, DataConfig())
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3, 2, 1)
    assert splits.val.name(0) == "val0" and splits.test.name(0) == "test0"
    assert "3 train / 2 val / 1 test" in splits.description


def test_validation_folder_alias_and_capitalised_names(tmp_path):
    _pair(tmp_path / "Train", "a", 1)
    _pair(tmp_path / "Train", "b", 1)
    _pair(tmp_path / "validation", "c", 1)
    splits = open_folder(tmp_path, DataConfig())
    assert (len(splits.train), len(splits.val)) == (2, 1)


def test_seeded_split_is_reproducible(tmp_path):
    for i in range(20):
        _pair(tmp_path, f"{i:02d}", 1, size=(4, 4))
    names = lambda s: [s.name(i) for i in range(len(s))]  # noqa: E731
    a, b = open_folder(tmp_path, DataConfig(seed=3)), open_folder(tmp_path, DataConfig(seed=3))
    c = open_folder(tmp_path, DataConfig(seed=4))
    assert names(a.val) == names(b.val) and names(a.train) == names(b.train)
    assert len(a.val) == 4 and len(a.train) == 16 and not set(names(a.val)) & set(names(a.train))
    assert names(c.val) != names(a.val)
    assert any("held out for validation" in n for n in a.notes)


def test_train_only_layout_uses_a_seeded_split(tmp_path):
    for i in range(5):
        _pair(tmp_path / "train", f"t{i}", 1)
    splits = open_folder(tmp_path, DataConfig(val_fraction=0.2))
    assert (len(splits.train), len(splits.val)) == (4, 1) and splits.test is None


# -- encodings and classes ------------------------------------------------------------------------


def test_grey_ids_without_classes_file(tmp_path):
    _pair(tmp_path, "a", 0, mask=np.array([[0, 1], [3, 255]], np.uint8), size=(2, 2))
    _pair(tmp_path, "b", 0, mask=np.array([[0, 0], [2, 2]], np.uint8), size=(2, 2))
    splits = open_folder(tmp_path, DataConfig())
    assert splits.classes.names == ("class 0", "class 1", "class 2", "class 3")
    masks = [splits.train.load(0)[1], splits.val.load(0)[1]]
    assert any(m.tolist() == [[0, 1], [3, IGNORE]] for m in masks)
    assert any("no classes file" in n for n in splits.notes)


def test_binary_0_255_masks(tmp_path):
    m = np.array([[0, 255], [255, 0]], np.uint8)
    _pair(tmp_path, "a", 0, mask=m, size=(2, 2))
    _pair(tmp_path, "b", 0, mask=m, size=(2, 2))
    splits = open_folder(tmp_path, DataConfig())
    assert splits.classes.names == ("background", "foreground")
    assert splits.train.load(0)[1].tolist() == [[0, 1], [1, 0]]


def test_palette_masks_keep_indices(tmp_path):
    idx = np.array([[0, 1], [2, 255]], np.uint8)
    for stem in ("a", "b"):
        _pair(tmp_path, stem, 0, size=(2, 2))
        p = Image.fromarray(idx, "P")
        p.putpalette([0, 0, 0, 7, 7, 7, 200, 0, 0] + [0] * (252 * 3) + [255, 255, 255])  # index 1 is grey 7
        p.save(tmp_path / "masks" / f"{stem}.png")
    splits = open_folder(tmp_path, DataConfig())
    assert splits.classes.num_classes == 3
    assert splits.train.load(0)[1].tolist() == [[0, 1], [2, IGNORE]]
    assert "palette masks" in splits.description


def test_rgb_masks_with_classes_file_colours(tmp_path):
    colors = [[0, 0, 0], [128, 64, 128], [250, 170, 30]]
    rgb = np.array([[colors[0], colors[1]], [colors[2], [255, 255, 255]]], np.uint8)
    for stem in ("a", "b"):
        _pair(tmp_path, stem, 0, size=(2, 2), mask=rgb)
    (tmp_path / "classes.json").write_text(
        json.dumps({"names": ["void-ish", "road", "sign"], "colors": colors, "ignore_color": [255, 255, 255]})
    )
    splits = open_folder(tmp_path, DataConfig())
    assert splits.classes.names == ("void-ish", "road", "sign")
    assert splits.classes.colors == tuple(tuple(c) for c in colors)
    assert splits.train.load(0)[1].tolist() == [[0, 1], [2, IGNORE]]


def test_rgb_masks_without_classes_file_use_their_colours(tmp_path):
    rgb = np.array([[[0, 0, 0], [9, 200, 9]]], np.uint8)
    for stem in ("a", "b"):
        _pair(tmp_path, stem, 0, size=(2, 1), mask=rgb)
    splits = open_folder(tmp_path, DataConfig())
    assert splits.classes.colors == ((0, 0, 0), (9, 200, 9))
    assert splits.train.load(0)[1].tolist() == [[0, 1]]


def test_rgb_masks_with_unknown_colour_fail_at_open(tmp_path):
    rgb = np.array([[[0, 0, 0], [1, 2, 3]]], np.uint8)
    for stem in ("a", "b"):
        _pair(tmp_path, stem, 0, size=(2, 1), mask=rgb)
    (tmp_path / "classes.json").write_text(json.dumps({"names": ["bg", "x"], "colors": [[0, 0, 0], [9, 9, 9]]}))
    with pytest.raises(DataError, match=r"masks/a.png has colours that are not class colours: \(1, 2, 3\)"):
        open_folder(tmp_path, DataConfig())


def test_classes_file_ignore_index_and_override(tmp_path):
    m = np.array([[0, 1], [2, 11]], np.uint8)
    for stem in ("a", "b"):
        _pair(tmp_path, stem, 0, size=(2, 2), mask=m)
    (tmp_path / "classes.json").write_text(json.dumps({"names": ["a", "b", "c", "d"]}))
    other = tmp_path / "elsewhere.json"
    other.write_text(json.dumps({"names": ["sky", "road", "car"], "ignore_index": 11}))
    with pytest.raises(DataError, match=r"found values \[11\] in masks/a.png but the classes file classes.json"):
        open_folder(tmp_path, DataConfig())  # classes.json in the root: 11 is out of range
    splits = open_folder(tmp_path, DataConfig(classes_file=str(other)))
    assert splits.classes.names == ("sky", "road", "car")
    assert splits.train.load(0)[1].tolist() == [[0, 1], [2, IGNORE]]


def test_out_of_range_labels_name_the_file_and_values(tmp_path):
    _pair(tmp_path, "good", 1)
    _pair(tmp_path, "bad", 0, mask=np.array([[0, 7], [9, 1]], np.uint8), size=(2, 2))
    (tmp_path / "classes.json").write_text(json.dumps(["bg", "thing"]))
    with pytest.raises(DataError) as e:
        open_folder(tmp_path, DataConfig())
    assert str(e.value).startswith(
        "labels out of range: found values [7, 9] in masks/bad.png but the classes "
        "file classes.json has 2 classes (0..1)"
    )


@pytest.mark.parametrize(
    "content,match",
    [
        ("{not json", "classes.json is not valid JSON"),
        ('{"colors": []}', 'needs a "names" list'),
        ('{"names": ["a", "b"], "colors": [[0, 0, 0]]}', "2 names but 1 colours"),
        ('{"names": ["a", "b"], "colors": [[0, 0, 0], [0, 0, 0]]}', "same colour"),
        ('{"names": ["a", "b"], "colors": [[0, 0, 0], [0, 0, 300]]}', "0..255"),
        ('{"names": ["a", "b"], "ignore_index": 1}', "ignore_index 1 is also the class 'b'"),
        ('{"names": ["a"], "colours": []}', "unknown keys"),
    ],
)
def test_bad_classes_files(tmp_path, content, match):
    (tmp_path / "classes.json").write_text(content)
    with pytest.raises(DataError, match=match):
        read_classes_file(tmp_path / "classes.json")


def test_shipped_camvid_classes_file():
    cf = read_classes_file(Path(__file__).resolve().parents[1] / "segdemo" / "data" / "camvid_classes.json")
    assert list(cf.names) == CAMVID_NAMES and cf.ignore_index == 11
    assert cf.colors[0] == (128, 128, 128) and cf.colors[10] == (0, 128, 192)


# -- sizes, EXIF, bad files -----------------------------------------------------------------------


def test_mask_size_mismatch_fails_on_load(tmp_path):
    _pair(tmp_path, "a", 1, size=(8, 6))
    _pair(tmp_path, "b", 1, size=(8, 6))
    Image.new("L", (4, 4), 1).save(tmp_path / "masks" / "b.png")
    splits = open_folder(tmp_path, DataConfig(val_fraction=0.5))
    src = splits.train if splits.train.name(0) == "b" else splits.val
    with pytest.raises(DataError) as e:
        src.load(0)
    assert str(e.value) == "masks/b.png is 4x4 but images/b.png is 8x6: masks must match their image's size"


def test_corrupt_image_fails_on_load_naming_it(tmp_path):
    _pair(tmp_path, "a", 1)
    _pair(tmp_path, "b", 1)
    (tmp_path / "images" / "a.png").write_bytes(b"<html>oops</html>")
    splits = open_folder(tmp_path, DataConfig(val_fraction=0.5))
    src = splits.train if splits.train.name(0) == "a" else splits.val
    with pytest.raises(DataError, match="^images/a.png is not a supported image"):
        src.load(0)


def test_corrupt_mask_fails_at_open(tmp_path):
    _pair(tmp_path, "a", 1)
    _pair(tmp_path, "b", 1)
    data = (tmp_path / "masks" / "b.png").read_bytes()
    (tmp_path / "masks" / "b.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="^masks/b.png is truncated or corrupt"):
        open_folder(tmp_path, DataConfig())


def _exif_pair(root: Path, stem: str, mask_size: tuple[int, int]) -> None:
    """Stored 60x40 photo (left red, right blue) with EXIF orientation 6; mask 1 where the red is."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    a = np.zeros((40, 60, 3), np.uint8)
    a[:, :30] = (255, 0, 0)
    a[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(root / "images" / f"{stem}.jpg", exif=exif, quality=95)
    w, h = mask_size
    m = np.zeros((h, w), np.uint8)
    if (w, h) == (60, 40):
        m[:, :30] = 1  # drawn on the stored pixels
    else:
        m[: h // 2] = 1  # drawn on the upright view: red is on top
    Image.fromarray(m).save(root / "masks" / f"{stem}.png")


@pytest.mark.parametrize("mask_size", [(60, 40), (40, 60)])
def test_exif_rotated_jpeg_and_its_mask_stay_aligned(tmp_path, mask_size):
    _exif_pair(tmp_path, "p1", mask_size)
    _exif_pair(tmp_path, "p2", mask_size)
    splits = open_folder(tmp_path, DataConfig(val_fraction=0.5))
    img, m = splits.train.load(0)
    assert img.shape == (60, 40, 3) and m.shape == (60, 40)
    red = img[..., 0] > 128
    assert (m[red] == 1).all() and (m[~red] == 0).all()


def test_missing_empty_and_unpaired_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist; expected .*images/ and .*masks/"):
        open_folder(tmp_path / "nope", DataConfig())
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is not a dataset folder; expected"):
        open_folder(tmp_path / "empty", DataConfig())
    (tmp_path / "np" / "images").mkdir(parents=True)
    (tmp_path / "np" / "masks").mkdir()
    Image.new("RGB", (2, 2)).save(tmp_path / "np" / "images" / "a.png")
    Image.new("L", (2, 2)).save(tmp_path / "np" / "masks" / "b.png")
    with pytest.raises(DataError, match=r"no image/mask pairs in .*np \(1 images and 1 masks without a partner\)"):
        open_folder(tmp_path / "np", DataConfig())
    (tmp_path / "half" / "val" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="no train/ folder"):
        open_folder(tmp_path / "half", DataConfig())


def test_too_few_pairs_to_train(tmp_path):
    _pair(tmp_path / "one", "a", 1)
    with pytest.raises(DataError, match="only one image/mask pair"):
        open_folder(tmp_path / "one", DataConfig())
    (tmp_path / "two" / "train" / "images").mkdir(parents=True)
    (tmp_path / "two" / "train" / "masks").mkdir(parents=True)
    _pair(tmp_path / "two" / "val", "a", 1)
    with pytest.raises(DataError, match="train has no image/mask pairs"):
        open_folder(tmp_path / "two", DataConfig())


def test_duplicate_stems_are_refused(tmp_path):
    _pair(tmp_path, "a", 1)
    _pair(tmp_path, "b", 1)
    Image.new("RGB", (8, 6)).save(tmp_path / "images" / "a.jpg")
    with pytest.raises(DataError, match="images/a.jpg and images/a.png share the name 'a'"):
        open_folder(tmp_path, DataConfig())


# -- open_dataset dispatch ------------------------------------------------------------------------


def test_open_dataset_folder_zip_and_errors(tmp_path):
    ds = tmp_path / "ds"
    for i in range(5):
        _pair(ds, f"{i}", 1)
    splits = open_dataset(DataConfig(source=str(ds)))
    assert len(splits.train) + len(splits.val) == 5
    capped = open_dataset(DataConfig(source=str(ds), train_images=2))
    assert len(capped.train) == 2 and any("train_images" in n for n in capped.notes)

    zpath = tmp_path / "ds.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(ds.rglob("*")):
            if p.is_file():
                zf.write(p, Path("mydata") / p.relative_to(ds))
        zf.writestr("__MACOSX/mydata/._0.png", b"resource fork")
    run = tmp_path / "run"
    splits = open_dataset(DataConfig(source=str(zpath)), run)
    assert len(splits.train) + len(splits.val) == 5
    assert (run / "data" / "mydata" / "images" / "0.png").is_file()
    assert any("1 entries of ds.zip were not unpacked" in n and "__MACOSX" in n for n in splits.notes)
    again = open_dataset(DataConfig(source=str(zpath)), run)  # a resumed run reuses the extraction
    assert len(again.train) + len(again.val) == 5
    with pytest.raises(DataError, match="needs a run folder"):
        open_dataset(DataConfig(source=str(zpath)))
    busy = tmp_path / "busy"
    (busy / "data").mkdir(parents=True)
    (busy / "data" / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="already exists and is not empty"):
        open_dataset(DataConfig(source=str(zpath)), busy)
    assert (busy / "data" / "mine.txt").read_text() == "keep me"

    with pytest.raises(DataError, match="unknown data source 'shapes'; choose builtin, oxford-pet"):
        open_dataset(DataConfig(source="shapes"))
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(DataConfig(source=str(tmp_path / "missing")))
    with pytest.raises(DataError, match="zip file .* does not exist"):
        open_dataset(DataConfig(source=str(tmp_path / "missing.zip")), run)


def test_parse_source():
    assert parse_source("builtin") == ("builtin", "")
    assert parse_source("oxford-pet:/data/pets") == ("oxford-pet", "/data/pets")
    assert parse_source("oxford-pet")[0] == "oxford-pet"


# -- real data ------------------------------------------------------------------------------------


@pytest.mark.skipif(not (CAMVID / "train").is_dir(), reason=f"CamVid not found at {CAMVID} (shared data absent)")
def test_camvid_folder_with_classes_file(tmp_path):
    cf = tmp_path / "camvid.json"
    cf.write_text(json.dumps({"names": CAMVID_NAMES, "ignore_index": 11}))
    splits = open_folder(CAMVID, DataConfig(classes_file=str(cf)))
    assert (len(splits.train), len(splits.val)) == (367, 101)
    img, m = splits.train.load(0)
    assert img.shape == (360, 480, 3) and img.dtype == np.uint8 and m.shape == (360, 480) and m.dtype == np.uint8
    values = set(np.unique(m).tolist())
    assert values <= set(range(11)) | {IGNORE} and len(values) > 3
