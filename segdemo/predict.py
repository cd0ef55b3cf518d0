"""Image -> mask with a model rebuilt from its checkpoint alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segdemo.checkpoint import Checkpoint, load_checkpoint, resolve_checkpoint
from segdemo.data.base import IGNORE, DataError
from segdemo.evaluate import forward_resized, logits_to_labels
from segdemo.metrics import SegMetrics, confusion_matrix, metrics_from_confusion
from segdemo.viz import colorize, error_map, overlay


@dataclass
class Prediction:
    mask: np.ndarray  # (H, W) uint8 class ids at the input's own resolution
    color: np.ndarray  # (H, W, 3) uint8
    overlay: np.ndarray  # (H, W, 3) uint8
    probs: np.ndarray  # (C, H, W) float32 per-class probabilities (sigmoid for a binary model)
    pixel_share: list[float]  # predicted share of each class
    metrics: SegMetrics | None = None  # when a ground truth was given
    errors: np.ndarray | None = None  # (H, W, 3) error map, when a ground truth was given


class Predictor:
    """Holds one model in eval mode; safe to call from several threads (inference only, no state)."""

    def __init__(self, checkpoint: Checkpoint):
        self.ckpt = checkpoint
        self.model = checkpoint.model.eval()
        self.config = checkpoint.config
        self.classes = checkpoint.classes
        self.device = next(self.model.parameters()).device

    @classmethod
    def from_path(cls, path: str | Path) -> Predictor:
        return cls(load_checkpoint(resolve_checkpoint(path)))

    @torch.inference_mode()
    def predict(self, image: np.ndarray, target: np.ndarray | None = None, alpha: float = 0.5) -> Prediction:
        """image: (H, W, 3) uint8 RGB of any size; target: optional (H, W) uint8 class ids with IGNORE."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DataError(f"expected an RGB uint8 image, got shape {image.shape} {image.dtype}")
        logits = forward_resized(self.model, [image], self.config, self.device)[0]
        if logits.shape[1] == 1:
            p = torch.sigmoid(logits[0, 0])
            probs = torch.stack([1 - p, p])
        else:
            probs = logits[0].softmax(0)
        mask = logits_to_labels(logits)[0].to(torch.uint8).cpu().numpy()
        k = self.classes.num_classes
        share = (np.bincount(mask.ravel(), minlength=k)[:k] / mask.size).tolist()
        color = colorize(mask, self.classes)
        pred = Prediction(mask, color, overlay(image, mask, self.classes, alpha, color),
                          probs.cpu().numpy().astype(np.float32, copy=False), share)
        if target is not None:
            if target.shape != mask.shape:
                raise DataError(f"the ground-truth mask is {target.shape[1]}x{target.shape[0]} but the image is "
                                f"{mask.shape[1]}x{mask.shape[0]}; upload the mask that belongs to this image")
            bad = np.setdiff1d(np.unique(target), [*range(k), IGNORE])
            if bad.size:
                raise DataError(f"the ground-truth mask holds labels {bad[:5].tolist()} but the model knows "
                                f"{k} classes (0..{k - 1}); is it the mask for this model's dataset?")
            cm = confusion_matrix(torch.from_numpy(mask), torch.from_numpy(np.array(target)), k)  # may be read-only
            pred.metrics = metrics_from_confusion(cm)
            pred.errors = error_map(mask, target)
        return pred
