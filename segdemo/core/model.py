"""U-Net of the tutorials (DoubleConv / Down / Up), with depth, width and up-sampling as settings, an optional
torchvision ResNet-18/34 encoder, and an ImageNet EfficientNet-Lite0 encoder (segdemo/core/pretrained.py)."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segdemo.errors import PretrainedUnavailable  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


class DoubleConv(nn.Module):
    """(convolution => [BN] => ReLU) * 2; residual: the input, through a 1x1 conv where the channels change,
    is added before the last ReLU (a ResNet basic block), which lets gradients skip the convolutions."""

    def __init__(self, in_ch: int, out_ch: int, mid_ch: int | None = None, residual: bool = False):
        super().__init__()
        mid_ch = mid_ch or out_ch
        layers = [
            nn.Conv2d(in_ch, mid_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.residual = residual
        if residual:
            self.shortcut = (
                nn.Identity()
                if in_ch == out_ch
                else nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
            )
        else:
            layers.append(nn.ReLU(inplace=True))
        self.block = nn.Sequential(*layers)  # the same parameter names either way

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual:
            return F.relu(self.block(x) + self.shortcut(x))
        return self.block(x)


class Down(nn.Module):
    """Max-pool by 2, then DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int, residual: bool = False):
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = DoubleConv(in_ch, out_ch, residual=residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class Up(nn.Module):
    """Up-sample by 2 (bilinear or transposed conv), concatenate the skip, then DoubleConv."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, bilinear: bool, residual: bool = False):
        super().__init__()
        if bilinear:
            # Smooth and weight-free; the following conv learns the detail.
            self.up: nn.Module = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            up_ch = in_ch
        else:
            # Learned up-sampling; can show checkerboard artefacts early in training.
            self.up = nn.ConvTranspose2d(in_ch, in_ch // 2, kernel_size=2, stride=2)
            up_ch = in_ch // 2
        self.conv = DoubleConv(up_ch + skip_ch, out_ch, residual=residual)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:  # ResNet stems can be off by one on odd sizes
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """Plain U-Net. Input (N, 3, H, W) float of any H, W; output (N, C, H, W) logits."""

    def __init__(
        self,
        num_classes: int,
        depth: int = 4,
        width: int = 16,
        bilinear: bool = True,
        in_ch: int = 3,
        residual: bool = False,
    ):
        super().__init__()
        self.depth = depth
        chans = [width * 2**i for i in range(depth + 1)]
        self.inc = DoubleConv(in_ch, chans[0], residual=residual)
        self.downs = nn.ModuleList(Down(chans[i], chans[i + 1], residual) for i in range(depth))
        self.ups = nn.ModuleList(
            Up(chans[i + 1], chans[i], chans[i], bilinear, residual) for i in reversed(range(depth))
        )
        self.outc = nn.Conv2d(chans[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, 2**self.depth)
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.outc(y)[..., :h, :w]


class ResNetUNet(nn.Module):
    """U-Net decoder over a torchvision ResNet-18/34 encoder (features at strides 2, 4, 8, 16, 32)."""

    def __init__(
        self,
        num_classes: int,
        encoder: str = "resnet18",
        width: int = 16,
        bilinear: bool = True,
        pretrained: bool = False,
        weights: str | None = None,
        residual: bool = False,
    ):
        super().__init__()
        self.encoder = _resnet(encoder, pretrained, weights)
        enc = [64, 64, 128, 256, 512]  # stem, layer1..layer4
        dec = [width * 2**i for i in range(5)]
        self.center = DoubleConv(enc[4], dec[4], residual=residual)
        self.ups = nn.ModuleList(Up(dec[i + 1], enc[i], dec[i], bilinear, residual) for i in reversed(range(4)))
        self.final_up = Up(dec[0], 3, dec[0], bilinear, residual)
        self.outc = nn.Conv2d(dec[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, 32)
        e: Any = self.encoder  # a torchvision ResNet: its stages by name
        s0 = e.relu(e.bn1(e.conv1(x)))  # /2
        s1 = e.layer1(e.maxpool(s0))  # /4
        s2 = e.layer2(s1)  # /8
        s3 = e.layer3(s2)  # /16
        s4 = e.layer4(s3)  # /32
        y = self.center(s4)
        for up, skip in zip(self.ups, (s3, s2, s1, s0), strict=True):
            y = up(y, skip)
        y = self.final_up(y, x)
        return self.outc(y)[..., :h, :w]


class LiteUNet(nn.Module):
    """U-Net decoder over timm's EfficientNet-Lite0 (features at strides 2..32 with 16, 24, 40, 112, 320
    channels). Input (N, 3, H, W) normalised with mean = std = 0.5; output (N, C, H, W) logits.

    `frozen_bn` keeps the encoder's BatchNorm statistics at their ImageNet values in training (the trainer
    sets it where small batches measured better that way); `encode` and `decode` split the forward pass for
    training the decoder alone on cached features (instant mode)."""

    def __init__(
        self, num_classes: int, width: int = 16, bilinear: bool = True, pretrained: bool = False, residual: bool = False
    ):
        super().__init__()
        from segdemo.core import pretrained as imagenet

        self.encoder = imagenet.encoder(pretrained)
        enc = imagenet.CHANNELS
        dec = [width * 2**i for i in range(5)]
        self.center = DoubleConv(enc[4], dec[4], residual=residual)
        self.ups = nn.ModuleList(Up(dec[i + 1], enc[i], dec[i], bilinear, residual) for i in reversed(range(4)))
        self.final_up = Up(dec[0], 3, dec[0], bilinear, residual)
        self.outc = nn.Conv2d(dec[0], num_classes, kernel_size=1)
        self.frozen_bn = False

    def train(self, mode: bool = True) -> LiteUNet:
        super().train(mode)
        if mode and self.frozen_bn:
            for m in self.encoder.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) with H, W multiples of 32 -> the encoder's 5 feature maps."""
        return self.encoder(x)

    def decode(self, x: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        """The padded input and its features -> logits at the padded size."""
        y = self.center(feats[4])
        for up, skip in zip(self.ups, feats[3::-1], strict=True):
            y = up(y, skip)
        return self.outc(self.final_up(y, x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, 32)
        return self.decode(x, self.encode(x))[..., :h, :w]


def _resnet(name: str, pretrained: bool, weights_file: str | None = None) -> nn.Module:
    import torchvision

    ctor = {"resnet18": torchvision.models.resnet18, "resnet34": torchvision.models.resnet34}[name]
    if weights_file:
        net = ctor(weights=None)
        load_encoder_weights(net, weights_file, name)
        return net
    if not pretrained:
        return ctor(weights=None)
    weights = {"resnet18": torchvision.models.ResNet18_Weights, "resnet34": torchvision.models.ResNet34_Weights}[
        name
    ].IMAGENET1K_V1
    try:
        return ctor(weights=weights)
    except Exception as e:  # URLError, socket errors, hash mismatch: all mean "no weights here"
        log.debug("loading ImageNet weights for %s failed", name, exc_info=True)
        raise PretrainedUnavailable(
            f"could not load ImageNet weights for {name} ({type(e).__name__}: {e}). Offline? Put "
            f"{weights.url.rsplit('/', 1)[-1]} in {torch.hub.get_dir()}/checkpoints, or train without "
            "--pretrained"
        ) from e


def load_encoder_weights(net: nn.Module, path: str, name: str) -> None:
    """A torchvision ImageNet state dict from a local file (offline pretrained weights) into a ResNet.

    .pth files are read with torch.load(weights_only=True): tensors only, never code. The classifier head
    (fc.*) may be missing or any size: the U-Net does not use it. Anything else must match exactly."""
    from pathlib import Path

    from segdemo.core.weights_file import check_weights_file
    from segdemo.errors import ConfigError

    p = Path(path)
    check_weights_file(p, name)  # sizes as stored and as unpacked, before torch allocates what a zip claims
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle with code, truncated file, not a tensor file: all "not usable weights"
        raise ConfigError(
            f"{p.name} is not a weights file torch can read safely ({type(e).__name__}); give a state dict "
            f"saved with torch.save(model.state_dict()) or safetensors"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # type: ignore[assignment]  # a training checkpoint that wraps its state dict
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{p.name} holds no state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    own = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    missing = sorted(set(own) - set(state))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or wrong or set(state) - set(own):
        what = f"{len(missing)} missing" if missing else f"{len(wrong)} of another shape" if wrong else "extra ones"
        first = (missing or wrong or sorted(set(state) - set(own)))[0]
        raise ConfigError(
            f"{p.name} does not fit a {name} encoder: {what} tensors (first: {first}). Give torchvision's "
            f"{name} ImageNet weights"
        )
    net.load_state_dict(state, strict=False)  # strict except the unused fc head
    log.info("loaded %s encoder weights from %s", name, p.name)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad the bottom/right so H and W are multiples of `multiple` (crop the output back)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def encoder_parameters(model: nn.Module) -> set[int]:
    """ids of the parameters of a pretrained-style encoder (`model.encoder`), for their own learning rate."""
    enc = getattr(model, "encoder", None)
    return {id(p) for p in enc.parameters()} if isinstance(enc, nn.Module) else set()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
