"""Honest validation for small data: a hasty student's 6 photos with the background painted on only 2.

The split holds out a photo of every class the data allows, the score says what it stands on, and a model
that paints everything "pet" cannot be the checkpoint kept, in the CLI and the app alike (one trainer)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from segdemo.core.checkpoint import load_checkpoint
from segdemo.core.config import DataConfig
from segdemo.core.evaluate import evaluate_model
from segdemo.core.metrics import metrics_from_confusion
from segdemo.data import open_dataset
from segdemo.data.base import SubsetSource, coverage_notes, seeded_split, stratified_split
from segdemo.data.check import FEW_PHOTOS
from segdemo.data.folder import open_folder
from segdemo.events import Done, EpochEnd, Started
from segdemo.training.trainer import Trainer
from tests.conftest import tiny_config
from tests.sloppy import write_fair_set, write_sloppy_set


def _has_class(src, c: int) -> bool:
    return any((src.load(i)[1] == c).any() for i in range(len(src)))


@pytest.fixture
def sloppy(tmp_path):
    return write_sloppy_set(tmp_path / "sloppy")


def _cfg(root, epochs=2):
    cfg = tiny_config(epochs=epochs, batch_size=2)
    cfg.data = DataConfig(source=str(root), image_size=32)
    return cfg


def test_the_old_seeded_split_held_out_a_photo_without_background(sloppy):
    """The bug, reproduced: the first seeded cut holds out photo3, which has pet paint only."""
    tr, va = seeded_split(6, 0.2, 0)
    assert va == [3]


def test_validation_holds_a_photo_of_every_class_the_data_allows(sloppy):
    splits = open_folder(sloppy, DataConfig(source=str(sloppy)))
    assert _has_class(splits.val, 0) and _has_class(splits.val, 1)  # background is scored
    assert _has_class(splits.train, 0)  # ... and one background photo is left to learn from
    assert any("'background' is labelled on only 2 of 6 photos (1 held out" in n for n in splits.warnings)


def test_stratified_split_rarest_first_and_never_a_class_last_training_photo():
    presence = np.zeros((10, 4), bool)
    presence[:, 0] = True
    presence[[2, 7], 1] = True  # two photos: one each side
    presence[[5], 2] = True  # one photo: it stays to train on
    presence[[1, 3, 8], 3] = True
    for seed in range(20):
        tr, va = stratified_split(presence, 0.2, seed)
        assert sorted(tr + va) == list(range(10)) and va
        assert presence[va, 1].any() and presence[tr, 1].any()
        assert 5 in tr
        assert presence[va, 3].any()
        assert len(va) <= 10 // 3


def test_stratified_split_is_seeded_and_like_the_plain_one_when_every_photo_has_every_class():
    presence = np.ones((20, 3), bool)
    assert stratified_split(presence, 0.2, 3) == stratified_split(presence, 0.2, 3)
    assert stratified_split(presence, 0.2, 3) == seeded_split(20, 0.2, 3)


def test_coverage_notes_name_thin_classes_only():
    presence = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 0, 1], [1, 1, 1]], bool)
    notes = coverage_notes(["a", "b", "c"], presence)
    assert len(notes) == 2 and "'b' is labelled on only 2 of 5" in notes[0] and "'c'" in notes[1]


def test_the_dataset_check_warns_in_words(sloppy):
    from segdemo.data import check_source

    rep = check_source(DataConfig(source=str(sloppy)))
    few = [w.text for w in rep.warnings if w.code == FEW_PHOTOS]
    assert few and "background" in few[0] and "2 of 6" in few[0]


class AllPet(torch.nn.Module):
    """A degenerate model: every pixel is "pet", whatever the photo."""

    def __init__(self, cfg):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor([0.0, 8.0]))

    def forward(self, x):
        return self.bias.view(1, 2, 1, 1).expand(x.shape[0], 2, *x.shape[2:]) * 1.0


def test_a_model_that_paints_everything_pet_cannot_win_on_a_thin_split(sloppy, tmp_path, monkeypatch):
    """Even on the old split (one val photo with pet paint only), where it scores a perfect 1.000."""
    cfg = _cfg(sloppy, epochs=1)
    cfg.train.learning_rate = 1e-9
    whole = open_folder(sloppy, cfg.data)
    from segdemo.data.base import Splits

    base = whole.train.base
    splits = Splits(train=SubsetSource(base, [0, 1, 2, 4, 5]), val=SubsetSource(base, [3]), classes=whole.classes)
    monkeypatch.setattr("segdemo.training.trainer.build_model", AllPet)
    events = list(Trainer(cfg, tmp_path / "run", splits=splits).events())
    end = next(e for e in events if isinstance(e, EpochEnd))
    assert end.miou == pytest.approx(1.0)  # the thin split's one number says "perfect"
    assert end.val_images == 1 and end.val_pixels > 0
    assert end.train_miou is not None and end.train_miou < 0.6  # the training photos show the background
    assert end.score == pytest.approx(min(end.miou, end.train_miou)) and end.score < 0.6
    started = next(e for e in events if isinstance(e, Started))
    assert "only 1 validation photo" in started.selection


def test_the_sloppy_run_is_never_reported_better_than_its_latest_epoch_on_a_fair_split(sloppy, tmp_path):
    cfg = _cfg(sloppy, epochs=12)
    cfg.model.width = 8
    run = tmp_path / "run"
    events = list(Trainer(cfg, run).events())
    done = events[-1]
    assert isinstance(done, Done), events[-1]
    ends = [e for e in events if isinstance(e, EpochEnd)]
    kept = next(e for e in ends if e.epoch == done.best_epoch)
    assert kept.score == max(e.score for e in ends)
    assert all(e.train_miou is not None and e.val_images == 1 and e.val_pixels > 0 for e in ends)
    assert "only 1 validation photo" in done.selection
    fair_root = write_fair_set(tmp_path / "fair")
    fair = open_folder(fair_root, DataConfig(source=str(fair_root), val_fraction=0.5))

    def fair_miou(path):
        c = load_checkpoint(path)
        res = evaluate_model(c.model, fair.train, c.config, c.classes)
        return metrics_from_confusion(res.confusion).miou

    best, last = fair_miou(run / "best.safetensors"), fair_miou(run / "last.safetensors")
    assert last > 0.6  # it learnt, so a kept checkpoint worse than the latest would be a false report
    assert best >= last - 0.05 or done.best_epoch == ends[-1].epoch, (best, last, [e.score for e in ends])
    # the record says what the score stands on
    rec = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rec[0]["val_images"] == 1 and rec[0]["val_pixels"] > 0 and not math.isnan(rec[0]["score"])
    assert load_checkpoint(run / "best.safetensors").meta["metrics"]["val_images"] == 1


def test_a_large_split_keeps_the_plain_rule(tmp_path):
    cfg = tiny_config(epochs=1)
    cfg.data.builtin_val = 32
    events = list(Trainer(cfg, tmp_path / "run", splits=open_dataset(cfg.data)).events())
    end = next(e for e in events if isinstance(e, EpochEnd))
    assert end.train_miou is None and end.score == end.miou and end.val_images == 32


def test_the_cli_says_it_too(sloppy, tmp_path):
    from tests.test_cli import cli

    r = cli("train", "--data", sloppy, "--out", tmp_path / "run", "--epochs", "2", "--image-size", "32", "--width", "4")
    assert r.returncode == 0, r.stderr
    assert "warning: 'background' is labelled on only 2 of 6 photos" in r.stdout
    assert "note: only 1 validation photo" in r.stdout and "train-photo mIoU" in r.stdout


def test_the_training_photo_sample_spreads_over_every_photo_of_a_small_set():
    from segdemo.training.selection import probe_indices

    assert probe_indices(5) == [0, 1, 2, 3, 4]
    assert probe_indices(0) == []
    assert len(probe_indices(1000)) == 32 and probe_indices(1000)[-1] == 999


def test_the_plan_line_for_a_few_photos_says_what_the_run_will_do():
    from segdemo.training import recipes
    from segdemo.training.recipes import MAX_EPOCHS, DataShape

    p = recipes.BY_KEY["minute"]
    plan = recipes.plan(p, DataShape(5, 1, 384, 512), per_pixel=1e-9)
    assert plan.config.train.epochs == MAX_EPOCHS
    assert f"up to {MAX_EPOCHS} epochs of 5 images" in plan.why
    assert f"about {plan.epochs_fit} epochs" not in plan.why
