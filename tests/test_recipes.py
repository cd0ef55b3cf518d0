"""Presets as time budgets (segdemo/training/recipes.py): the plan adapts to the data's size and the machine's speed."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from segdemo.core.checkpoint import load_checkpoint
from segdemo.core.config import ModelConfig, RunConfig
from segdemo.core.encoders import build_model
from segdemo.errors import ConfigError
from segdemo.training import recipes
from segdemo.training.recipes import DataShape

SHAPES = DataShape(768, 128, 128, 128)
CAMVID = DataShape(367, 101, 360, 480)
QUICK_CPU = 2.4e-6  # s per training pixel: about what the minute preset measures on a 2-core Xeon


def test_the_budget_buys_the_preset_minimum_of_epochs_at_the_largest_scale_that_allows_it():
    p = recipes.preset("10min")
    plan = recipes.plan(p, CAMVID, per_pixel=QUICK_CPU)
    cfg = plan.config
    assert cfg.data.resize == "short" and cfg.data.image_size % 32 == 0
    assert plan.epochs_fit >= p.min_epochs and cfg.train.epochs >= plan.epochs_fit
    assert plan.epochs_fit * plan.epoch_s <= p.seconds  # the estimate fits the budget
    assert cfg.train.time_budget_s == p.seconds and cfg.train.schedule == "warmup_cosine" and cfg.train.lr_follows_time
    bigger = cfg.data.image_size + 32
    epoch_bigger = (CAMVID.n_train + CAMVID.n_val * 480 / 360 * recipes.EVAL_COST) * QUICK_CPU * bigger**2
    assert (p.seconds * 0.95 - recipes.SETUP_S) // epoch_bigger < p.min_epochs  # the next scale up would not
    assert f"{cfg.data.image_size} px" in plan.why and f"about {plan.epochs_fit} epochs" in plan.why
    assert f"up to {cfg.train.epochs} epochs" in plan.why


def test_a_faster_machine_or_smaller_data_gets_a_larger_scale_never_above_the_images():
    p = recipes.preset("10min")
    slow = recipes.plan(p, CAMVID, per_pixel=QUICK_CPU).config.data.image_size
    fast = recipes.plan(p, CAMVID, per_pixel=QUICK_CPU / 8).config.data.image_size
    small_data = recipes.plan(p, DataShape(20, 6, 360, 480), per_pixel=QUICK_CPU).config.data.image_size
    assert slow < fast <= p.max_scale and slow < small_data
    tiny_images = recipes.plan(p, DataShape(20, 6, 50, 70), per_pixel=QUICK_CPU / 8).config
    assert tiny_images.data.image_size == 50  # never up-scaled past the images' own short side
    assert "own size" in recipes.plan(p, DataShape(20, 6, 50, 70), per_pixel=QUICK_CPU / 8).why


def test_rare_classes_get_a_weighted_loss():
    rare = recipes.plan(recipes.preset("10min"), DataShape(367, 101, 360, 480, rarest=0.001), per_pixel=QUICK_CPU)
    common = recipes.plan(recipes.preset("10min"), DataShape(367, 101, 360, 480, rarest=0.05), per_pixel=QUICK_CPU)
    assert rare.config.train.loss == "weighted_ce" and "0.1% of the pixels" in rare.why
    assert common.config.train.loss == RunConfig().train.loss and "rarest" not in common.why


def test_the_sample_reads_sizes_and_class_shares(tmp_path):
    from segdemo.data.base import ArraySource, ClassSet, Splits

    images = [np.zeros((h, w, 3), np.uint8) for h, w in [(30, 40), (50, 60), (70, 20)]]
    masks = [np.zeros(im.shape[:2], np.uint8) for im in images]
    masks[0][0, :4] = 1  # 4 pixels of class 1 in 30*40 + 50*60 + 70*20 = 5600
    masks[1][:, :] = 255  # ignore: not counted
    src = ArraySource(images, masks, ["a", "b", "c"])
    shape = DataShape.of(Splits(src, src, ClassSet.default(["bg", "thing"])))
    assert (shape.n_train, shape.short, shape.long) == (3, 30, 60)
    assert shape.rarest == pytest.approx(4 / (1200 + 1400))


def test_a_slow_machine_gets_fewer_epochs_never_a_scale_too_small_to_see_anything():
    cfg = recipes.plan(recipes.preset("minute"), SHAPES, per_pixel=QUICK_CPU * 20).config
    assert cfg.data.image_size == recipes.MIN_SCALE and cfg.train.epochs >= 1


def test_presets_keep_the_data_settings_they_are_given_and_unknown_ones_are_refused():
    base = RunConfig()
    base.data.source, base.data.classes_file = "some/folder", "classes.json"
    cfg = recipes.plan(recipes.preset("minute"), SHAPES, base=base, per_pixel=QUICK_CPU).config
    assert (cfg.data.source, cfg.data.classes_file) == ("some/folder", "classes.json")
    assert base.data.image_size == RunConfig().data.image_size  # base is not changed
    cfg.validate()
    with pytest.raises(ConfigError, match="minute, 10min, gpu"):
        recipes.preset("quick")


def test_the_measured_plan_on_the_built_in_shapes(tmp_path):
    """The real probe: a plan on this machine is a valid config within the budget."""
    plan = recipes.plan(recipes.preset("minute"), recipes.builtin_shape(RunConfig().data))
    plan.config.validate()
    assert 32 <= plan.config.data.image_size <= 128 and plan.config.train.epochs >= 1
    assert "img/s measured here" in plan.why


def test_cli_preset_plans_and_the_options_given_win(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "segdemo", "train", "--preset", "minute", "--out", str(out), "--epochs", "1",
         "--image-size", "32", "--max-train-images", "16", "--width", "4"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "About a minute (CPU):" in r.stdout
    cfg = load_checkpoint(out / "best.safetensors").config
    assert (cfg.train.epochs, cfg.data.image_size, cfg.model.width) == (1, 32, 4)  # the options won
    assert cfg.train.time_budget_s == 60 and cfg.train.schedule == "warmup_cosine"  # the plan's budget stayed


# -- model choices -------------------------------------------------------------------------------------


def test_residual_blocks_keep_the_plain_names_and_add_shortcuts():
    plain = build_model(ModelConfig(width=4, depth=2, num_classes=3)).state_dict()
    res = build_model(ModelConfig(width=4, depth=2, num_classes=3, block="residual")).state_dict()
    assert set(plain) < set(res) and all("shortcut" in k for k in set(res) - set(plain))
    x = torch.randn(2, 3, 37, 45)
    assert build_model(ModelConfig(width=4, depth=2, num_classes=3, block="residual"))(x).shape == (2, 3, 37, 45)


def _resnet18_state(marker: float) -> dict:
    import torchvision

    state = torchvision.models.resnet18(weights=None).state_dict()
    state["conv1.weight"].fill_(marker)
    return state


def test_local_encoder_weights_load_offline(tmp_path):
    f = tmp_path / "resnet18-imagenet.pth"
    torch.save(_resnet18_state(0.125), f)
    net = build_model(ModelConfig(encoder="resnet18", width=4, num_classes=2, encoder_weights=str(f)))
    assert torch.all(net.encoder.conv1.weight == 0.125)
    from safetensors.torch import save_file

    st = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in _resnet18_state(0.5).items() if not k.startswith("fc.")}, str(st))
    net = build_model(ModelConfig(encoder="resnet18", width=4, num_classes=2, encoder_weights=str(st)))
    assert torch.all(net.encoder.conv1.weight == 0.5)


class _Boom:
    def __reduce__(self):
        return (eval, ("__import__('pathlib').Path('PWNED').touch()",))


def test_bad_encoder_weights_are_refused_with_a_sentence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _Boom()}, evil)
    with pytest.raises(ConfigError, match="not a weights file torch can read safely"):
        build_model(ModelConfig(encoder="resnet18", width=4, num_classes=2, encoder_weights=str(evil)))
    assert not (tmp_path / "PWNED").exists()
    import torchvision

    r34 = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), r34)
    with pytest.raises(ConfigError, match="does not fit a resnet18 encoder"):
        build_model(ModelConfig(encoder="resnet18", width=4, num_classes=2, encoder_weights=str(r34)))
    with pytest.raises(ConfigError, match="no weights file"):
        build_model(ModelConfig(encoder="resnet18", width=4, num_classes=2, encoder_weights=str(tmp_path / "nope.pth")))
    cfg = RunConfig()
    cfg.model.encoder_weights = str(r34)
    with pytest.raises(ConfigError, match="ResNet encoder"):
        cfg.validate()


def test_a_run_with_local_weights_saves_a_checkpoint_that_loads_without_them(tmp_path):
    f = tmp_path / "w.pth"
    torch.save(_resnet18_state(0.01), f)
    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "segdemo", "train", "--out", str(out), "--encoder", "resnet18", "--weights", str(f),
         "--width", "4", "--image-size", "32", "--epochs", "1", "--max-train-images", "8"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    f.unlink()  # the checkpoint holds every weight: the file is not needed to predict
    ck = load_checkpoint(out / "best.safetensors")
    assert ck.config.model.encoder == "resnet18" and ck.config.model.encoder_weights is None
