"""Albumentations pipelines: geometry is applied to image and mask together, masks with nearest-neighbour."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # it otherwise checks the internet for updates

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from segdemo.config import DataConfig  # noqa: E402
from segdemo.data.base import IGNORE  # noqa: E402


def train_transform(cfg: DataConfig) -> A.Compose:
    """Resize to the training size, then (if enabled) flip, scale/rotate a little, jitter brightness.

    Pixels that rotation brings in from outside the image are IGNORE in the mask, so the net is
    never taught that the black border is a class.
    """
    s = cfg.image_size
    steps = [A.Resize(s, s, interpolation=cv2.INTER_AREA, mask_interpolation=cv2.INTER_NEAREST)]
    if cfg.augment:
        steps += [
            A.HorizontalFlip(p=0.5),
            A.Affine(
                scale=(0.85, 1.15),
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


def eval_resize(image: np.ndarray, size: int) -> np.ndarray:
    """The image as the model sees it at evaluation and prediction: square, `size` px."""
    if image.shape[:2] == (size, size):
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


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
