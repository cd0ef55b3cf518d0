"""Checkpoints: atomic, self-describing, and refusing anything that is not ours without running it."""

import json
import os
import pickle
import struct

import pytest
import torch
from safetensors.torch import save as st_save

from segdemo.core.checkpoint import CheckpointError, CheckpointWriteError, load_checkpoint, read_meta, save_checkpoint
from segdemo.core.encoders import build_model
from segdemo.data.builtin import CLASSES
from tests.conftest import tiny_config


@pytest.fixture
def saved(tmp_path):
    cfg = tiny_config()
    cfg.model.num_classes = 4
    model = build_model(cfg.model)
    path = save_checkpoint(tmp_path / "m.safetensors", model, cfg, CLASSES, metrics={"miou": 0.5})
    return path, model, cfg


def test_round_trip_rebuilds_the_same_model(saved):
    path, model, cfg = saved
    ck = load_checkpoint(path)
    x = torch.randn(1, 3, 40, 40)
    model.eval()
    with torch.no_grad():
        assert torch.equal(ck.model(x), model(x))
    assert ck.classes == CLASSES and ck.config == cfg and ck.metrics == {"miou": 0.5}
    assert read_meta(path)["normalization"]["image_size"] == 32


class Payload:
    """Unpickling this writes a marker file: proof that a loader ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(Payload(str(marker))))
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(evil)
    torch.save({"x": Payload(str(marker))}, tmp_path / "evil.pt")  # torch's zip format
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_not_ours_and_damaged(tmp_path, saved):
    other = tmp_path / "other.safetensors"
    other.write_bytes(st_save({"w": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match="not a segdemo checkpoint"):
        load_checkpoint(other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"hello")
    with pytest.raises(CheckpointError):
        load_checkpoint(junk)
    path = saved[0]
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(cut)


def test_oversized_header_is_refused(tmp_path):
    big = tmp_path / "big.safetensors"
    big.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(CheckpointError, match="header"):
        load_checkpoint(big)


def _rewrite(path, tmp_path, edit):
    """Copy a checkpoint with its tensors edited, keeping our metadata."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(tensors)
    out = tmp_path / "edited.safetensors"
    out.write_bytes(st_save(tensors, metadata=meta))
    return out


def test_wrong_shape_dtype_and_nan_are_refused(saved, tmp_path):
    path = saved[0]
    key = "model.outc.weight"
    for edit, why in [
        (lambda t: t.__setitem__(key, torch.zeros(5, 4, 1, 1)), "expected"),
        (lambda t: t.__setitem__(key, t[key].double()), "float64"),
        (lambda t: t[key].__setitem__((0, 0, 0, 0), float("nan")), "NaN"),
        (lambda t: t.pop(key), "missing"),
    ]:
        with pytest.raises(CheckpointError, match=why):
            load_checkpoint(_rewrite(path, tmp_path, edit))


def test_broken_config_in_metadata(saved, tmp_path):
    from safetensors import safe_open

    path = saved[0]
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["segdemo"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["config"]["model"]["depth"] = 99
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(st_save(tensors, metadata={"segdemo": json.dumps(meta)}))
    with pytest.raises(CheckpointError, match="broken config"):
        load_checkpoint(bad)


def test_failed_write_keeps_the_previous_checkpoint(saved, tmp_path, monkeypatch):
    path, model, cfg = saved
    before = path.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(CheckpointWriteError, match="previous checkpoint is kept"):
        save_checkpoint(path, model, cfg, CLASSES, metrics={"miou": 0.9})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left


def test_configs_saved_with_the_old_upsampling_name_still_load():
    """Checkpoints and job records from before `upsampling` say `bilinear: true/false`."""
    from pathlib import Path

    from segdemo.core.config import RunConfig
    from segdemo.errors import ConfigError

    shipped = Path(__file__).resolve().parents[1] / "checkpoints" / "shapes_unet.safetensors"
    assert read_meta(shipped)["config"]["model"]["bilinear"] is False  # saved under the old name
    assert load_checkpoint(shipped).config.model.upsampling == "transposed"
    assert RunConfig.from_dict({"model": {"bilinear": True}}).model.upsampling == "bilinear"
    with pytest.raises(ConfigError, match="keep one"):
        RunConfig.from_dict({"model": {"bilinear": True, "upsampling": "transposed"}})


def test_a_header_whose_length_starts_like_a_pickle_still_loads(tmp_path):
    """A header length with 0x80 as its low byte makes the file start with the pickle opcode: still ours."""
    cfg = tiny_config()
    model = build_model(cfg.model)
    for pad in range(300):  # grow the JSON header a byte at a time until its length is 0x80 modulo 256
        path = save_checkpoint(tmp_path / "c.safetensors", model, cfg, CLASSES, metrics={"note": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no header length ended in 0x80")
    assert load_checkpoint(path).classes == CLASSES
