"""Albumentations pipelines: geometry is applied to image and mask together, masks with nearest-neighbour.

Geometry, as segmentation codebases do it: an image is resized by a scale (its short or long side to
`image_size`, aspect ratio kept), training then jitters that scale and takes a random square crop (padding
with the ignore index where the image is smaller, never with a class), and evaluation and prediction run
the fully convolutional net on the whole scaled image. Old checkpoints ("square") squash to a square.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # it otherwise checks the internet for updates

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from segdemo.data.base import IGNORE  # noqa: E402
from segdemo.data.config import DataConfig  # noqa: E402

MAX_ASPECT = 8  # a scaled image's long side is at most this many times image_size: a 40000x1 strip must not
# become a 64 x 2.5-million-pixel input (budget.py counts on this bound)


def scaled_size(h: int, w: int, cfg: DataConfig) -> tuple[int, int]:
    """(height, width) at which the model sees an h x w image."""
    s = cfg.image_size
    if cfg.resize == "square":
        return s, s
    f = s / (min(h, w) if cfg.resize == "short" else max(h, w))
    f = min(f, MAX_ASPECT * s / max(h, w))
    return max(1, round(h * f)), max(1, round(w * f))


def max_scaled_pixels(cfg: DataConfig) -> int:
    """The most pixels scaled_size() can give, whatever the image (for memory estimates)."""
    s = cfg.image_size
    return s * s * (MAX_ASPECT if cfg.resize == "short" else 1)


def _resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == size:
        return image
    # INTER_AREA both ways, as before aspect-kept geometry: old checkpoints predict exactly as they did, and
    # the exported scripts reproduce it in numpy (export/scripts/, area_weights)
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def _rescale(cfg: DataConfig):
    """A Lambda step: image (INTER_AREA) and mask (nearest) to scaled_size(); the same size for both because
    it depends only on their shared shape."""

    def image(x, **_):
        return _resize_image(x, scaled_size(*x.shape[:2], cfg))

    def mask(m, **_):
        size = scaled_size(*m.shape[:2], cfg)
        # NEAREST_EXACT samples each output pixel's centre, on INTER_AREA's grid; plain INTER_NEAREST takes
        # its top-left source pixel, up to half a source pixel off the image
        return m if m.shape[:2] == size else cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_NEAREST_EXACT)

    return A.Lambda(image=image, mask=mask, name="rescale")


def train_transform(cfg: DataConfig) -> A.Compose:
    """Scale (aspect kept), jitter the scale, pad to the crop with IGNORE, random crop; then (if augment is on)
    flip, rotate a little, jitter brightness. Every batch of a run is crop x crop, so batches stack.

    Pixels that padding or rotation bring in from outside the image are IGNORE in the mask, so the net is
    never taught that the black border is a class.
    """
    c = cfg.crop
    steps = [_rescale(cfg)]
    lo, hi = cfg.scale_range
    steps += [
        A.PadIfNeeded(
            c,
            c,
            position="random" if cfg.augment else "center",
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=IGNORE,
        ),
        A.RandomCrop(c, c) if cfg.augment else A.CenterCrop(c, c),
    ]
    if cfg.augment:
        steps += [
            A.HorizontalFlip(p=0.5),
            # scale jitter, a small rotation and shift in one step, on half the crops: measured on the shapes,
            # a separate always-on rescale before the crop cost mIoU (bench/README.md)
            A.Affine(
                scale=(lo, hi),
                rotate=(-15, 15),
                translate_percent=(-0.05, 0.05),
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=IGNORE,
                p=0.5,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        ]
    return A.Compose(steps)


def eval_resize(image: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """The whole image as the model sees it at evaluation and prediction: scaled by scaled_size()."""
    return _resize_image(image, scaled_size(image.shape[0], image.shape[1], cfg))


def to_tensor(images: np.ndarray, mean, std) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, normalised by mean/std (given in 0..1 units)."""
    return normalise(torch.from_numpy(np.ascontiguousarray(images)), mean, std)


def normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """(N, H, W, 3) uint8 tensor on any device -> (N, 3, H, W) float32 there, normalised by mean/std: a GPU
    run copies the small uint8 batch (pinned, asynchronously) and does this arithmetic on the GPU."""
    x = images.permute(0, 3, 1, 2).float().div_(255)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s
