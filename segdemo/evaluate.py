"""Honest evaluation: predict at the model's size, up-sample logits to each mask's own size, one confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segdemo.config import RunConfig
from segdemo.data.base import IGNORE, ClassSet, PairSource
from segdemo.metrics import ConfusionMeter, SegMetrics
from segdemo.transforms import eval_resize, to_tensor


@dataclass
class EvalResult:
    metrics: SegMetrics
    loss: float
    previews: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]  # (name, image, target, pred)


def logits_to_labels(logits: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W) int64; one channel means a binary task thresholded at 0."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(1)


def forward_resized(model: nn.Module, images: list[np.ndarray], config: RunConfig, device: torch.device,
                    autocast_dtype: torch.dtype | None = None, channels_last: bool = False) -> list[torch.Tensor]:
    """Run the model on images resized to the training size; return float32 logits at each image's own size."""
    size = config.data.image_size
    x = to_tensor(np.stack([eval_resize(im, size) for im in images]), config.data.mean, config.data.std).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        logits = model(x)
    logits = logits.float()
    out = []
    for i, im in enumerate(images):
        h, w = im.shape[:2]
        li = logits[i : i + 1]
        if li.shape[-2:] != (h, w):
            li = F.interpolate(li, size=(h, w), mode="bilinear", align_corners=False)
        out.append(li)
    return out


@torch.inference_mode()
def evaluate_model(
    model: nn.Module,
    source: PairSource,
    config: RunConfig,
    classes: ClassSet,
    loss_fn: nn.Module | None = None,
    *,
    device: torch.device | None = None,
    batch_size: int = 8,
    preview_indices: list[int] | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    should_stop=None,
) -> EvalResult:
    """Metrics over the whole split at each mask's original resolution; the model's mode is restored after."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    meter = ConfusionMeter(classes.num_classes)
    total_loss, n_loss = 0.0, 0
    wanted = set(preview_indices or [])
    previews = []
    try:
        for start in range(0, len(source), batch_size):
            if should_stop is not None and should_stop():
                break
            idx = list(range(start, min(start + batch_size, len(source))))
            pairs = [source.load(i) for i in idx]
            logits = forward_resized(model, [p[0] for p in pairs], config, device, autocast_dtype, channels_last)
            for i, (image, mask), lg in zip(idx, pairs, logits, strict=True):
                target = torch.from_numpy(mask.astype(np.int64)).to(device)[None]
                if loss_fn is not None and (target != IGNORE).any():
                    total_loss += float(loss_fn(lg, target))
                    n_loss += 1
                pred = logits_to_labels(lg)
                meter.update(pred, target)
                if i in wanted:
                    previews.append((source.name(i), image, mask, pred[0].to(torch.uint8).cpu().numpy()))
    finally:
        model.train(was_training)
    return EvalResult(meter.compute(), total_loss / max(n_loss, 1), previews)


def preview_indices(n: int, k: int) -> list[int]:
    """k fixed, evenly spread indices of a split of n, the same every epoch."""
    if n == 0 or k == 0:
        return []
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(min(k, n))})
