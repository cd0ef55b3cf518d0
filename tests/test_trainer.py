"""The loop end to end on tiny built-in data: events, checkpoints, stop, resume, reproducibility."""

import json
import threading

import numpy as np
import pytest
import torch

from segdemo.core.checkpoint import load_checkpoint
from segdemo.core.config import RunConfig
from segdemo.core.metrics import confusion_matrix, metrics_from_confusion
from segdemo.data.builtin import open_builtin
from segdemo.errors import ConfigError
from segdemo.events import Done, EpochEnd, Failed, Progress, Started
from segdemo.training.resume import LoopState
from segdemo.training.schedule import lr_at, next_epoch_misses_budget, schedule_progress
from segdemo.training.schedule import plateau_step as _plateau
from segdemo.training.trainer import Trainer
from tests.conftest import tiny_config


def run(cfg, run_dir, **kw):
    events = []
    tr = Trainer(cfg, run_dir, splits=open_builtin(cfg.data), **kw)
    tr.add_callback(events.append)
    return tr.run(), events


def test_events_in_order_and_files_written(tmp_path):
    result, events = run(tiny_config(epochs=2, preview_images=3), tmp_path)
    assert isinstance(result, Done) and result.reason == "finished" and result.epochs_done == 2
    kinds = [type(e) for e in events if not isinstance(e, Progress)]
    assert kinds == [Started, EpochEnd, EpochEnd, Done]
    ends = [e for e in events if isinstance(e, EpochEnd)]
    assert [e.epoch for e in ends] == [1, 2]
    e = ends[-1]
    assert 0 <= e.miou <= 1 and len(e.per_class_iou) == 4 and e.images_per_s > 0 and e.lr > 0
    assert len(e.previews) == 3 and e.previews[0].pred.shape == e.previews[0].target.shape
    assert [p.name for p in ends[0].previews] == [p.name for p in e.previews]  # same images each epoch
    # where it fails: the split's confusion (its metrics are the epoch's) and its lowest-scoring images
    assert e.confusion.shape == (4, 4) and metrics_from_confusion(e.confusion).miou == pytest.approx(e.miou)
    assert 1 <= len(e.worst) <= 4 and [w.miou for w in e.worst] == sorted(w.miou for w in e.worst)
    for w in e.worst:  # each scored on its own pixels (128 px images travel unshrunk)
        own = confusion_matrix(torch.tensor(w.pred), torch.tensor(w.target), 4)
        assert metrics_from_confusion(own).miou == pytest.approx(w.miou)
    for name in ("best.safetensors", "last.safetensors", "metrics.jsonl", "curves.png"):
        assert (tmp_path / name).is_file(), name
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert not list(tmp_path.glob(".*tmp*"))  # no temp files left behind


def test_checkpoint_rebuilds_model_alone(tmp_path):
    result, events = run(tiny_config(epochs=1), tmp_path)
    ck = load_checkpoint(tmp_path / "best.safetensors")
    assert ck.classes.names == ("background", "circle", "square", "triangle")
    assert ck.config.model.width == 4 and ck.config.data.image_size == 32
    assert ck.metrics["miou"] == pytest.approx(result.best_miou, abs=1e-6)


def test_learns_something(tmp_path):
    cfg = tiny_config(epochs=4, learning_rate=5e-3)
    result, events = run(cfg, tmp_path)
    ends = [e for e in events if isinstance(e, EpochEnd)]
    assert ends[-1].train_loss < ends[0].train_loss


def test_same_seed_same_numbers(tmp_path):
    a, ev_a = run(tiny_config(epochs=1), tmp_path / "a")
    b, ev_b = run(tiny_config(epochs=1), tmp_path / "b")
    la = [e.train_loss for e in ev_a if isinstance(e, EpochEnd)]
    lb = [e.train_loss for e in ev_b if isinstance(e, EpochEnd)]
    assert la == pytest.approx(lb, rel=1e-5)


def test_stop_within_one_batch(tmp_path):
    cfg = tiny_config(epochs=50, batch_size=2)
    stop = threading.Event()
    batches_after_stop = []

    def on_event(ev):
        if isinstance(ev, Progress):
            if stop.is_set():
                batches_after_stop.append(ev)
            if ev.epoch == 2 and ev.batch == 3:
                stop.set()  # mid-epoch

    tr = Trainer(cfg, tmp_path, splits=open_builtin(cfg.data), should_stop=stop.is_set)
    tr.add_callback(on_event)
    result = tr.run()
    assert isinstance(result, Done) and result.reason == "stopped" and result.epochs_done == 1
    assert batches_after_stop == []
    assert load_checkpoint(tmp_path / "best.safetensors")  # the best checkpoint survives a stop


def test_resume_continues_at_next_epoch_with_same_result(tmp_path):
    full, ev_full = run(tiny_config(epochs=3), tmp_path / "full")
    stop_after = {"n": 0}

    def stop_at_epoch_2():
        return stop_after["n"] >= 2

    part_dir = tmp_path / "part"
    tr = Trainer(tiny_config(epochs=3), part_dir, splits=open_builtin(tiny_config().data), should_stop=stop_at_epoch_2)
    tr.add_callback(lambda e: stop_after.__setitem__("n", stop_after["n"] + isinstance(e, EpochEnd)))
    assert tr.run().epochs_done == 2
    resumed, ev_res = run(tiny_config(epochs=3), part_dir, resume=True)
    assert [e.epoch for e in ev_res if isinstance(e, EpochEnd)] == [3]
    assert ev_res[0].start_epoch == 3
    full_last = [e for e in ev_full if isinstance(e, EpochEnd)][-1]
    res_last = [e for e in ev_res if isinstance(e, EpochEnd)][-1]
    # optimiser, schedule and RNG restored: epoch 3 is the same as in the uninterrupted run
    assert res_last.train_loss == pytest.approx(full_last.train_loss, rel=1e-4)
    log = [json.loads(x)["epoch"] for x in (part_dir / "metrics.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3]


def test_bad_settings_fail_with_a_sentence(tmp_path):
    cfg = tiny_config()
    cfg.train.loss = "bce"  # four classes: bce is for two
    result, events = run(cfg, tmp_path)
    assert isinstance(result, Failed) and "two-class" in result.message


def test_warmup_cosine_schedule_shape():
    lrs = [lr_at(s / 100, 1.0, "warmup_cosine") for s in range(100)]
    assert lrs[0] < lrs[10] and max(lrs) == pytest.approx(1.0) and lrs[-1] < 0.05
    assert np.argmax(lrs) == 10
    assert lr_at(0.5, 1.0, "constant") == 1.0
    assert lr_at(0.5, 1.0, "plateau", plateau_scale=0.25) == 0.25


def test_a_time_budget_ends_the_schedule_by_the_clock():
    """Whichever runs out first, steps or time, sets how far along the schedule is."""
    assert schedule_progress(10, 100, 30.0, None) == pytest.approx(0.1)
    assert schedule_progress(10, 100, 30.0, 60.0) == pytest.approx(0.5)
    assert schedule_progress(90, 100, 30.0, 60.0) == pytest.approx(0.9)
    assert schedule_progress(10, 100, 90.0, 60.0) == 1.0


def test_a_time_budget_stops_before_an_epoch_that_would_not_fit():
    assert not next_epoch_misses_budget(50.0, 9.0, 60.0)
    assert next_epoch_misses_budget(52.0, 9.0, 60.0)  # it would end at 61 s, after the budget
    assert not next_epoch_misses_budget(1e6, 9.0, None)


def test_plateau_halves_the_rate_after_three_epochs_without_a_better_miou(tmp_path):
    state = LoopState()
    for improved in (True, False, False):
        _plateau(state, improved)
    assert state.plateau_scale == 1.0
    _plateau(state, False)  # the third epoch without progress
    assert state.plateau_scale == 0.5 and state.plateau_bad == 0
    cfg = tiny_config(epochs=2)
    cfg.train.schedule = "plateau"
    result, events = run(cfg, tmp_path)
    assert result.reason == "finished"
    ends = [e for e in events if isinstance(e, EpochEnd)]
    assert ends[1].lr == pytest.approx(cfg.train.learning_rate)  # warm-up over, no plateau yet


def test_settings_have_one_name_and_the_old_names_still_load(tmp_path):
    """The page, the config and the CLI say learning_rate, time budget, encoder_weights and train_images; a
    checkpoint or job record written with lr, time_limit_s, weights or max_train_images still loads."""
    old = {
        "data": {"max_train_images": 12},
        "model": {"weights": "resnet18.pth", "encoder": "resnet18"},
        "train": {"lr": 0.002, "time_limit_s": 90.0},
    }
    cfg = RunConfig.from_dict(old)
    assert (cfg.train.learning_rate, cfg.train.time_budget_s) == (0.002, 90.0)
    assert (cfg.model.encoder_weights, cfg.data.train_images) == ("resnet18.pth", 12)
    with pytest.raises(ConfigError, match="both lr and learning_rate"):
        RunConfig.from_dict({"train": {"lr": 0.1, "learning_rate": 0.2}})
    from segdemo.cli import _parser
    from segdemo.ui.settings import SETTINGS

    train = {"learning_rate", "time_budget", "encoder_weights", "train_images"}
    assert train <= {s.name for s in SETTINGS}  # the page's names
    flags = {a.dest: a.option_strings for a in _parser()._subparsers._group_actions[0].choices["train"]._actions}
    for name in train:
        assert f"--{name.replace('_', '-')}" in flags[name]  # the CLI's: the same word
    assert "--lr" in flags["learning_rate"] and "--weights" in flags["encoder_weights"]  # older flags still work


def test_configs_saved_with_the_old_schedule_name_load():
    cfg = RunConfig.from_dict({"train": {"schedule": "onecycle"}})
    assert cfg.train.schedule == "warmup_cosine"
    cfg.train.schedule = "cyclic"
    with pytest.raises(ConfigError, match="warmup_cosine, plateau, constant"):
        cfg.validate()


def test_a_run_in_chunks_of_steps_equals_one_run(tmp_path):
    """Chunked training (a ZeroGPU call, a fair-share slice) pauses mid-epoch with a resumable checkpoint;
    the chunks together compute exactly what one run computes: same batches, augmentations, RNG, precision."""
    cfg = tiny_config(epochs=3)
    assert cfg.data.augment
    whole, _ = run(cfg, tmp_path / "whole")
    assert whole.reason == "finished"
    chunks, first = [], True
    while True:
        res, events = run(cfg, tmp_path / "chunked", resume=not first, max_steps=3)
        first = False
        chunks.append(res)
        assert isinstance(res, Done), res
        if res.reason != "paused":
            break
        assert sum(isinstance(e, Progress) for e in events) <= 3
    assert res.reason == "finished" and len(chunks) > 3  # several pauses, some of them mid-epoch

    def log(d):
        return [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]

    a, b = log(tmp_path / "whole"), log(tmp_path / "chunked")
    assert [r["epoch"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b, strict=True):
        for k in ("train_loss", "val_loss", "miou", "pixel_accuracy", "lr", "per_class_iou"):
            assert ra[k] == rb[k], (k, ra[k], rb[k])


def test_stop_between_chunks_then_resume_to_the_end(tmp_path):
    cfg = tiny_config(epochs=2)
    res, _ = run(cfg, tmp_path, max_steps=2)
    assert res.reason == "paused" and load_checkpoint(tmp_path / "last.safetensors").meta["training_state"]["batch"]
    res, _ = run(cfg, tmp_path, resume=True, should_stop=lambda: True)
    assert res.reason == "stopped" and res.epochs_done == 0
    res, _ = run(cfg, tmp_path, resume=True)
    assert res.reason == "finished" and res.epochs_done == 2
