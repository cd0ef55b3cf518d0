"""U-Net of the tutorials (DoubleConv / Down / Up), with depth, width and up-sampling as settings,
and an optional torchvision ResNet-18/34 encoder."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from segdemo.config import ModelConfig
from segdemo.errors import PretrainedUnavailable  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


class DoubleConv(nn.Module):
    """(convolution => [BN] => ReLU) * 2"""

    def __init__(self, in_ch: int, out_ch: int, mid_ch: int | None = None):
        super().__init__()
        mid_ch = mid_ch or out_ch
        self.block = nn.Sequential(
            nn.Conv2d(in_ch, mid_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Down(nn.Module):
    """Max-pool by 2, then DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = DoubleConv(in_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class Up(nn.Module):
    """Up-sample by 2 (bilinear or transposed conv), concatenate the skip, then DoubleConv."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, bilinear: bool):
        super().__init__()
        if bilinear:
            # Smooth and weight-free; the following conv learns the detail.
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            up_ch = in_ch
        else:
            # Learned up-sampling; can show checkerboard artefacts early in training.
            self.up = nn.ConvTranspose2d(in_ch, in_ch // 2, kernel_size=2, stride=2)
            up_ch = in_ch // 2
        self.conv = DoubleConv(up_ch + skip_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:  # ResNet stems can be off by one on odd sizes
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """Plain U-Net. Input (N, 3, H, W) float of any H, W; output (N, C, H, W) logits."""

    def __init__(self, num_classes: int, depth: int = 4, width: int = 16, bilinear: bool = True, in_ch: int = 3):
        super().__init__()
        self.depth = depth
        chans = [width * 2**i for i in range(depth + 1)]
        self.inc = DoubleConv(in_ch, chans[0])
        self.downs = nn.ModuleList(Down(chans[i], chans[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(Up(chans[i + 1], chans[i], chans[i], bilinear) for i in reversed(range(depth)))
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
    ):
        super().__init__()
        self.encoder = _resnet(encoder, pretrained)
        enc = [64, 64, 128, 256, 512]  # stem, layer1..layer4
        dec = [width * 2**i for i in range(5)]
        self.center = DoubleConv(enc[4], dec[4])
        self.ups = nn.ModuleList(Up(dec[i + 1], enc[i], dec[i], bilinear) for i in reversed(range(4)))
        self.final_up = Up(dec[0], 3, dec[0], bilinear)
        self.outc = nn.Conv2d(dec[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, 32)
        e = self.encoder
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


def _resnet(name: str, pretrained: bool) -> nn.Module:
    import torchvision

    ctor = {"resnet18": torchvision.models.resnet18, "resnet34": torchvision.models.resnet34}[name]
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


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad the bottom/right so H and W are multiples of `multiple` (crop the output back)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def build_model(cfg: ModelConfig) -> nn.Module:
    if cfg.encoder == "unet":
        return UNet(cfg.num_classes, depth=cfg.depth, width=cfg.width, bilinear=cfg.upsampling == "bilinear")
    return ResNetUNet(
        cfg.num_classes,
        encoder=cfg.encoder,
        width=cfg.width,
        bilinear=cfg.upsampling == "bilinear",
        pretrained=cfg.pretrained,
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
