"""segdemo.data.oxford: trimap/binary classes on the Oxford-IIIT Pet mini copy; clear errors, no downloads."""

from __future__ import annotations

import sys
import types
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from segdemo.core.config import DataConfig
from segdemo.data import open_dataset
from segdemo.data.base import IGNORE, DataError
from segdemo.data.oxford import open_oxford_pet, trimap_lut

MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "oxford-iiit-pet-mini"
needs_mini = pytest.mark.skipif(
    not (MINI / "oxford-iiit-pet" / "images").is_dir(),
    reason=f"Oxford-IIIT Pet mini copy not found at {MINI} (shared data absent)",
)


def test_trimap_lookup():
    t, b = trimap_lut("trimap"), trimap_lut("binary")
    assert (t[1], t[2], t[3]) == (1, 0, 2)  # pet, background, border
    assert (b[1], b[2], b[3]) == (1, 0, IGNORE)
    assert t[0] == IGNORE and b[7] == IGNORE


def test_missing_data_without_download_is_a_clear_error(tmp_path):
    with pytest.raises(DataError) as e:
        open_oxford_pet(tmp_path, DataConfig(source="oxford-pet"))
    msg = str(e.value)
    assert str(tmp_path / "oxford-iiit-pet") in msg and "--download" in msg


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    class Offline:
        def __init__(self, *a, **kw):
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    # A stand-in torchvision: no network, and none of its 5-second import.
    fake = types.ModuleType("torchvision.datasets")
    fake.OxfordIIITPet = Offline
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.datasets", fake)
    with pytest.raises(DataError) as e:
        open_oxford_pet(tmp_path, DataConfig(source="oxford-pet", download=True))
    msg = str(e.value)
    assert msg.startswith("could not download Oxford-IIIT Pet (no internet?)") and str(tmp_path) in msg


@needs_mini
def test_trimap_mode_loads_the_mini_copy():
    splits = open_oxford_pet(MINI, DataConfig(pet_mode="trimap", val_fraction=0.2, seed=0))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 4, 6)
    assert splits.classes.names == ("background", "pet", "border")
    img, m = splits.train.load(0)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and m.shape == img.shape[:2]
    assert set(np.unique(m).tolist()) == {0, 1, 2}
    assert set(np.unique(splits.test.load(0)[1]).tolist()) <= {0, 1, 2}


@needs_mini
def test_binary_mode_ignores_the_border():
    tri = open_oxford_pet(MINI, DataConfig(pet_mode="trimap"))
    bin_ = open_oxford_pet(MINI, DataConfig(pet_mode="binary"))
    assert bin_.classes.names == ("background", "pet")
    _, mt = tri.train.load(0)
    _, mb = bin_.train.load(0)
    assert set(np.unique(mb).tolist()) == {0, 1, IGNORE}
    assert ((mt == 2) == (mb == IGNORE)).all() and ((mt == 1) == (mb == 1)).all()


@needs_mini
def test_seeded_split_and_dispatch_through_open_dataset():
    a = open_dataset(DataConfig(source=f"oxford-pet:{MINI}", seed=5))
    inner = MINI / "oxford-iiit-pet"  # pointing at the inner folder works too
    b = open_dataset(DataConfig(source=f"oxford-pet:{inner}", seed=5))
    assert [a.val.name(i) for i in range(len(a.val))] == [b.val.name(i) for i in range(len(b.val))]
    assert "Oxford-IIIT Pet (trimap)" in a.description


def test_default_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGDEMO_OXFORD_ROOT", str(tmp_path / "pets"))
    with pytest.raises(DataError, match=str(tmp_path / "pets")):
        open_dataset(DataConfig(source="oxford-pet"))
