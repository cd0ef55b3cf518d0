"""segdemo.data.check and check_source: every problem collected, in sentences, never raised."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdemo.core.config import DataConfig
from segdemo.data import check_source
from segdemo.data.base import ArraySource, ClassSet, Splits
from segdemo.data.check import check_dataset
from tests.conftest import CAMVID_NAMES

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _pair(root: Path, stem: str, mask: np.ndarray, img_size: tuple[int, int] | None = None) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    w, h = img_size or (mask.shape[1], mask.shape[0])
    Image.new("RGB", (w, h), (90, 90, 90)).save(root / "images" / f"{stem}.png")
    Image.fromarray(mask).save(root / "masks" / f"{stem}.png")


M = np.array([[0, 0, 1, 1], [0, 0, 2, 255]], np.uint8)  # four 0s, two 1s, one 2, one ignore


def test_clean_dataset_is_ok_with_shares(tmp_path):
    for s in ("a", "b"):
        _pair(tmp_path, s, M)
    rep = check_dataset(tmp_path, DataConfig())
    assert rep.ok and rep.problems == []
    assert rep.pairs == {"all": 2} and rep.encoding == "ids"
    assert rep.label_values == [0, 1, 2, 255]
    assert rep.class_names == ["class 0", "class 1", "class 2"]
    assert rep.pixel_share == pytest.approx({"class 0": 4 / 7, "class 1": 2 / 7, "class 2": 1 / 7})
    assert rep.ignore_share == pytest.approx(1 / 8)
    assert any("no classes file" in w.text for w in rep.warnings)
    text = rep.to_text()
    assert text.startswith("Dataset check: OK") and "class 0 57.1%" in text and "pairs: all 2" in text
    json.dumps(rep.to_dict())


def test_images_without_masks_are_reported(tmp_path):
    for s in ("a", "b"):
        _pair(tmp_path, s, M)
    Image.new("RGB", (4, 2)).save(tmp_path / "images" / "lonely.jpg")
    Image.new("L", (4, 2)).save(tmp_path / "masks" / "orphan.png")
    rep = check_dataset(tmp_path, DataConfig())
    assert rep.ok  # unpaired files are skipped, not fatal
    assert rep.unpaired_images == ["images/lonely.jpg"] and rep.unpaired_masks == ["masks/orphan.png"]
    assert any("1 images have no mask and are skipped: images/lonely.jpg" in w.text for w in rep.warnings)


def test_all_problems_are_collected(tmp_path):
    cls = tmp_path / "classes.json"
    cls.write_text(json.dumps({"names": ["bg", "a", "b"]}))
    _pair(tmp_path, "good", M)
    _pair(tmp_path, "small", M, img_size=(8, 8))  # mask 4x2, image 8x8
    _pair(tmp_path, "range", np.array([[0, 5], [9, 1]], np.uint8))
    _pair(tmp_path, "html", M)
    (tmp_path / "images" / "html.png").write_text("<!doctype html><html></html>")
    _pair(tmp_path, "cut", M)
    data = (tmp_path / "masks" / "cut.png").read_bytes()
    (tmp_path / "masks" / "cut.png").write_bytes(data[:40])
    rep = check_dataset(tmp_path, DataConfig())
    assert not rep.ok and rep.pairs == {"all": 5}
    assert [m["mask"] for m in rep.size_mismatches] == ["masks/small.png"]
    assert rep.size_mismatches[0]["mask_size"] == [4, 2] and rep.size_mismatches[0]["image_size"] == [8, 8]
    assert rep.out_of_range == [{"file": "masks/range.png", "values": [5, 9], "reason": rep.out_of_range[0]["reason"]}]
    assert {u["file"] for u in rep.unreadable} == {"images/html.png", "masks/cut.png"}
    joined = " ".join(rep.problems)
    assert "masks/small.png is 4x2 but images/small.png is 8x8" in joined
    assert "found values [5, 9] in masks/range.png but the classes file classes.json has 3 classes" in joined
    assert "images/html.png is not a supported image" in joined and "masks/cut.png is truncated" in joined
    assert rep.to_text().startswith("Dataset check: PROBLEMS FOUND")
    json.dumps(rep.to_dict())


def test_long_lists_are_capped(tmp_path):
    _pair(tmp_path, "ok1", M)
    _pair(tmp_path, "ok2", M)
    for i in range(25):
        _pair(tmp_path, f"bad{i:02d}", M)
        (tmp_path / "masks" / f"bad{i:02d}.png").write_text("<html></html>")
    rep = check_dataset(tmp_path, DataConfig())
    assert len(rep.unreadable) == 25 and not rep.ok
    assert len(rep.problems) == 21 and rep.problems[-1] == "... and 5 more files"


def test_no_pairs_and_missing_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (2, 2)).save(tmp_path / "images" / "a.png")
    rep = check_dataset(tmp_path, DataConfig())
    assert not rep.ok and "no image/mask pairs" in rep.problems[0] and rep.unpaired_images == ["images/a.png"]
    rep = check_dataset(tmp_path / "missing", DataConfig())
    assert not rep.ok and "does not exist" in rep.problems[0]
    (tmp_path / "split" / "train" / "images").mkdir(parents=True)
    (tmp_path / "split" / "train" / "masks").mkdir()
    for s in ("a", "b"):
        _pair(tmp_path / "split" / "val", s, M)
    rep = check_dataset(tmp_path / "split", DataConfig())
    assert not rep.ok and rep.pairs == {"train": 0, "val": 2} and "train/ folder has no" in rep.problems[0]


def test_bad_classes_file_and_mixed_masks(tmp_path):
    _pair(tmp_path, "a", M)
    rgb = np.zeros((2, 4, 3), np.uint8)
    rgb[0, 0] = (200, 10, 10)
    _pair(tmp_path, "b", rgb)
    (tmp_path / "classes.json").write_text("{oops")
    rep = check_dataset(tmp_path, DataConfig())
    assert not rep.ok
    assert any("classes.json is not valid JSON" in p for p in rep.problems)
    assert any("masks mix colour-coded files (masks/b.png)" in p for p in rep.problems)


def test_check_of_opened_splits():
    img = np.zeros((4, 4, 3), np.uint8)
    good, bad = np.zeros((4, 4), np.uint8), np.full((4, 4), 7, np.uint8)
    good[0] = 1
    splits = Splits(
        train=ArraySource([img, img], [good, bad], ["t0", "t1"]),
        val=ArraySource([img], [good[:2]], ["v0"]),
        classes=ClassSet.default(["bg", "fg"]),
    )
    rep = check_dataset(splits, name="arrays")
    assert rep.pairs == {"train": 2, "val": 1} and not rep.ok
    assert rep.out_of_range[0]["file"] == "train/t1" and rep.out_of_range[0]["values"] == [7]
    assert rep.size_mismatches[0]["image"] == "val/v0"
    assert rep.pixel_share == pytest.approx({"bg": 0.75, "fg": 0.25})


def test_check_source_never_raises(tmp_path):
    (tmp_path / "bad.zip").write_bytes(b"nope")
    rep = check_source(DataConfig(source=str(tmp_path / "bad.zip")))
    assert not rep.ok and "bad.zip is not a valid zip file" in rep.problems[0]
    rep = check_source(DataConfig(source="nonsense"))
    assert not rep.ok and "unknown data source" in rep.problems[0]
    rep = check_source(DataConfig(source="oxford-pet:" + str(tmp_path / "nopets")))
    assert not rep.ok and "--download" in rep.problems[0]


def test_check_source_on_a_zip(tmp_path):
    ds = tmp_path / "ds"
    for s in ("a", "b", "c"):
        _pair(ds, s, M)
    z = tmp_path / "ds.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(ds.rglob("*.png")):
            zf.write(p, Path("top") / p.relative_to(ds))
    before = {p for p in tmp_path.rglob("*")}
    rep = check_source(DataConfig(source=str(z)))  # no workdir: unpacked into a temporary folder
    assert rep.ok and rep.pairs == {"all": 3}
    assert {p for p in tmp_path.rglob("*")} == before
    rep = check_source(DataConfig(source=str(z)), tmp_path / "run")
    assert rep.ok and (tmp_path / "run" / "data" / "top" / "masks" / "a.png").is_file()


def test_check_source_builtin():
    pytest.importorskip("segdemo.data.builtin")
    rep = check_source(DataConfig(source="builtin", builtin_train=6, builtin_val=2))
    assert rep.ok, rep.problems
    assert rep.pairs == {"train": 6, "val": 2} and abs(sum(rep.pixel_share.values()) - 1) < 1e-6


@pytest.mark.skipif(not (SHARED / "camvid" / "val").is_dir(), reason=f"CamVid not found at {SHARED / 'camvid'}")
def test_camvid_val_check(tmp_path):
    cls = tmp_path / "camvid.json"
    cls.write_text(json.dumps({"names": CAMVID_NAMES, "ignore_index": 11}))
    rep = check_dataset(SHARED / "camvid" / "val", DataConfig(classes_file=str(cls)))
    assert rep.ok, rep.problems
    assert rep.pairs == {"all": 101} and rep.encoding == "ids"
    assert set(rep.label_values) <= set(range(12)) and 11 in rep.label_values
    assert rep.pixel_share["Road"] > 0.1 and 0 < rep.ignore_share < 0.1


@pytest.mark.skipif(not (SHARED / "oxford-iiit-pet-mini").is_dir(), reason="Oxford-IIIT Pet mini copy absent")
def test_oxford_mini_check():
    rep = check_source(DataConfig(source=f"oxford-pet:{SHARED / 'oxford-iiit-pet-mini'}"))
    assert rep.ok, rep.problems
    assert rep.pairs == {"train": 16, "val": 4, "test": 6}
    assert set(rep.pixel_share) == {"background", "pet", "border"}
