"""Honest evaluation: predict on the whole image at the training scale, up-sample logits to each mask's own size,
one confusion matrix."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segdemo.core.config import RunConfig
from segdemo.core.metrics import ConfusionMeter, SegMetrics, image_miou
from segdemo.core.transforms import eval_resize, to_tensor
from segdemo.data.base import IGNORE, ClassSet, PairSource

# class scores are up-sampled to full size in bands of at most this (budget.py counts it in a run's peak)
OUTPUT_BAND_BYTES = 64 << 20


@dataclass
class ScoredImage:
    """One evaluated image with its own score: the worst-images strip."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8, at its own size
    target: np.ndarray  # (H, W) uint8 class ids, IGNORE kept
    pred: np.ndarray  # (H, W) uint8 class ids
    miou: float  # this image's mIoU (metrics.image_miou)


@dataclass
class EvalResult:
    metrics: SegMetrics
    loss: float
    previews: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]  # (name, image, target, pred)
    confusion: torch.Tensor | None = None  # (C, C) int64 counts: what processes sum before computing metrics
    loss_sum: float = 0.0  # over the `loss_count` images whose mask has valid pixels
    loss_count: int = 0
    worst: list[ScoredImage] = field(default_factory=list)  # the `worst` lowest-scoring images, lowest first


def logits_to_labels(logits: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W) int64; one channel means a binary task thresholded at 0."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(1)


def forward_scaled(
    model: nn.Module,
    images: list[np.ndarray],
    config: RunConfig,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> list[torch.Tensor]:
    """Float32 logits (1, C, h, w) per image, each run whole at the training scale (transforms.scaled_size).

    Images of one scaled size share a forward pass, at most max_batch_pixels() pixels at a time; sizes differ
    on real photos, so the simple rule is: group by size, never pad one image to another's size. With
    config.data.window set, an image larger than the window runs as overlapping windows (sliding_window)."""
    d = config.data
    scaled = [eval_resize(im, d) for im in images]
    out: list[torch.Tensor | None] = [None] * len(images)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, x in enumerate(scaled):
        groups.setdefault(x.shape[:2], []).append(i)
    limit = max_batch_pixels(config)
    for (h, w), idx in groups.items():
        step = max(1, limit // (h * w))
        for k in range(0, len(idx), step):
            part = idx[k : k + step]
            xt = to_tensor(np.stack([scaled[i] for i in part]), d.mean, d.std).to(device)
            if channels_last:
                xt = xt.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                if d.window and max(h, w) > d.window:
                    logits = torch.cat([sliding_window(model, xt[j : j + 1], d.window) for j in range(len(part))])
                else:
                    logits = model(xt)
            for j, i in enumerate(part):
                out[i] = logits[j : j + 1].float()
    return [t for t in out if t is not None]  # every image is in one group: all filled


def max_batch_pixels(config: RunConfig) -> int:
    """Pixels one evaluation forward pass may hold: 4 training batches' worth (inference keeps about a quarter of
    training's floats per pixel, budget.py), and never less than one whole image."""
    return 4 * config.train.batch_size * config.data.crop**2


def sliding_window(model: nn.Module, x: torch.Tensor, window: int) -> torch.Tensor:
    """(1, 3, H, W) -> (1, C, H, W) logits from window x window tiles overlapping by a third, averaged where
    they overlap: an image much larger than the training crop runs in the memory of one tile."""
    h, w = x.shape[-2:]
    stride = max(1, window * 2 // 3)

    def starts(n: int) -> list[int]:
        return [0] if n <= window else sorted({*range(0, n - window, stride), n - window})

    total: torch.Tensor | None = None
    count = torch.zeros((1, 1, h, w), device=x.device)
    for y in starts(h):
        for x0 in starts(w):
            tile = model(x[..., y : y + window, x0 : x0 + window]).float()
            if total is None:  # the class count is known at the first tile
                total = torch.zeros((1, tile.shape[1], h, w), device=x.device)
            total[..., y : y + tile.shape[-2], x0 : x0 + tile.shape[-1]] += tile
            count[..., y : y + tile.shape[-2], x0 : x0 + tile.shape[-1]] += 1
    assert total is not None  # starts() always gives at least one tile
    return total / count


def forward_resized(
    model: nn.Module,
    images: list[np.ndarray],
    config: RunConfig,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> list[torch.Tensor]:
    """Run the model on each whole image at the training scale; return float32 logits at each image's own size.

    Full-size scores take classes x pixels x 4 bytes: labels_at_size() gets the labels in bounded memory."""
    logits = forward_scaled(model, images, config, device, autocast_dtype, channels_last)
    return [upsample(lg, im.shape[:2]) for lg, im in zip(logits, images, strict=True)]


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1, C, h, w) -> (1, C, H, W), bilinear."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def labels_at_size(logits: torch.Tensor, size: tuple[int, int], band_bytes: int = OUTPUT_BAND_BYTES) -> torch.Tensor:
    """(1, C, h, w) logits -> (H, W) int64 labels of the bilinearly up-sampled scores, computed in bands of
    rows so that at most `band_bytes` of full-size scores exist at once (250 classes at 2048x2048 would
    otherwise need 4 GB per copy)."""
    h, w = size
    c = logits.shape[1]
    if c * h * w * 4 <= band_bytes:
        return logits_to_labels(upsample(logits, size))[0]
    rows = max(1, band_bytes // (c * w * 4))
    # grid_sample with border padding computes exactly F.interpolate's bilinear, align_corners=False
    xs = (torch.arange(w, device=logits.device, dtype=torch.float32) + 0.5) / w * 2 - 1
    out = torch.empty((h, w), dtype=torch.int64, device=logits.device)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        ys = (torch.arange(r0, r1, device=logits.device, dtype=torch.float32) + 0.5) / h * 2 - 1
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]
        band = F.grid_sample(logits, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out[r0:r1] = logits_to_labels(band)[0]
    return out


def _loss_at_size(loss_fn: nn.Module, logits: torch.Tensor, mask: np.ndarray, device) -> float:
    """The loss against the mask at its own size, or (when classes x pixels would not fit in a band) at a
    smaller size with the mask shrunk by nearest neighbour: a large photo must not cost gigabytes here."""
    h, w = mask.shape
    c = logits.shape[1]
    f = max(1.0, (c * h * w * 4 / OUTPUT_BAND_BYTES) ** 0.5)
    if f > 1:
        import cv2

        h, w = max(1, int(h / f)), max(1, int(w / f))
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    target = torch.from_numpy(mask.astype(np.int64)).to(device)[None]
    if not (target != IGNORE).any():
        return float("nan")
    return float(loss_fn(upsample(logits, (h, w)), target))


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
    indices: list[int] | None = None,
    worst: int = 0,
) -> EvalResult:
    """Metrics over the whole split (or over `indices` of it: one process's share) at each mask's original
    resolution; previews of `preview_indices` whether counted or not; the `worst` counted images with the
    lowest mIoU of their own, found in the same pass (a heap of `worst` entries: memory stays bounded
    whatever the split's size). The model's mode is restored after."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    meter = ConfusionMeter(classes.num_classes)
    total_loss, n_loss = 0.0, 0
    wanted = set(preview_indices or [])
    previews = []
    counted = set(range(len(source))) if indices is None else set(indices)
    todo = sorted(counted | wanted)
    heap: list[tuple[float, int, ScoredImage]] = []  # (-mIoU, -index, image): the best of the kept on top
    try:
        for start in range(0, len(todo), batch_size):
            if should_stop is not None and should_stop():
                break
            idx = todo[start : start + batch_size]
            pairs = [source.load(i) for i in idx]
            logits = forward_scaled(model, [p[0] for p in pairs], config, device, autocast_dtype, channels_last)
            for i, (image, mask), lg in zip(idx, pairs, logits, strict=True):
                pred = labels_at_size(lg, mask.shape)
                if i in wanted:
                    previews.append((source.name(i), image, mask, pred.to(torch.uint8).cpu().numpy()))
                if i not in counted:
                    continue
                if loss_fn is not None:
                    loss = _loss_at_size(loss_fn, lg, mask, device)
                    if not np.isnan(loss):
                        total_loss += loss
                        n_loss += 1
                cm = meter.update(pred[None], torch.from_numpy(mask.astype(np.int64)).to(device)[None])
                if worst > 0:
                    score = image_miou(cm)
                    if not math.isnan(score) and (len(heap) < worst or -score > heap[0][0]):
                        kept = ScoredImage(source.name(i), image, mask, pred.to(torch.uint8).cpu().numpy(), score)
                        heapq.heappush(heap, (-score, -i, kept))
                        if len(heap) > worst:
                            heapq.heappop(heap)
    finally:
        model.train(was_training)
    ranked = [s for _, _, s in sorted(heap, key=lambda e: (-e[0], -e[1]))]
    return EvalResult(
        meter.compute(), total_loss / max(n_loss, 1), previews, meter.cm, total_loss, n_loss, worst=ranked
    )


def preview_indices(n: int, k: int) -> list[int]:
    """k fixed, evenly spread indices of a split of n, the same every epoch."""
    if n == 0 or k == 0:
        return []
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(min(k, n))})
