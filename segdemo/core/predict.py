"""Image -> mask with a model rebuilt from its checkpoint alone; a ground-truth mask paired by file name and
decoded with the model's classes scores it (the app's Predict tab and `segdemo predict --masks`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segdemo.core.checkpoint import Checkpoint, load_checkpoint, resolve_checkpoint
from segdemo.core.evaluate import forward_scaled, labels_at_size, upsample
from segdemo.core.metrics import SegMetrics, confusion_matrix, metrics_from_confusion
from segdemo.core.viz import colorize, error_map, overlay
from segdemo.data.base import IGNORE, ClassSet, DataError
from segdemo.imageio import align_mask, load_image_oriented, load_mask_raw

PROB_MAX_SIDE = 512  # probability maps are for looking at: no need for 250 full-size float images
PROB_MAX_VALUES = 16 << 20
MASK_SUFFIXES = ("", "_mask", "-mask", "_gt", "-gt", "_label", "_labels")  # cat.png -> cat.png, cat_mask.png...


@dataclass
class Prediction:
    mask: np.ndarray  # (H, W) uint8 class ids at the input's own resolution
    color: np.ndarray  # (H, W, 3) uint8
    overlay: np.ndarray  # (H, W, 3) uint8
    probs: np.ndarray | None  # (C, h, w) float32 per-class probabilities (sigmoid for a binary model), at
    # the image's size or smaller (longest side PROB_MAX_SIDE, C*h*w <= PROB_MAX_VALUES); None unless asked
    pixel_share: list[float]  # predicted share of each class
    metrics: SegMetrics | None = None  # when a ground truth was given
    errors: np.ndarray | None = None  # (H, W, 3) error map, when a ground truth was given
    confusion: torch.Tensor | None = None  # (C, C) int64, rows = truth: sum these for a set's metrics


@dataclass
class FilePrediction:
    """One image file predicted, scored against its true mask when one was given (Predictor.predict_file)."""

    name: str  # the image's file name
    image: np.ndarray  # (H, W, 3) uint8, upright, as predicted (shrunk when it was over max_side)
    target: np.ndarray | None  # the true mask's class ids at that size, when one was given
    prediction: Prediction
    shrunk_from: tuple[int, int] | None = None  # (width, height) before shrinking, when it was shrunk


Runner = Callable[..., Prediction]  # predict(image, target=, alpha=, probabilities=): Predictor.predict or a wrapper


class Predictor:
    """Holds one model in eval mode; safe to call from several threads (inference only, no state)."""

    def __init__(self, checkpoint: Checkpoint, device: str = "auto"):
        from segdemo.core.speedups import pick_device

        self.ckpt = checkpoint
        self.device = pick_device(device)  # the GPU when there is one ("auto"); the labels come back to the CPU
        self.model = checkpoint.model.eval().to(self.device)
        self.config = checkpoint.config
        self.classes = checkpoint.classes

    @classmethod
    def from_path(cls, path: str | Path, max_predict_bytes: int | None = None, device: str = "auto") -> Predictor:
        """Load and check a checkpoint; with max_predict_bytes, refuse one that could not predict within it."""
        return cls(load_checkpoint(resolve_checkpoint(path), max_predict_bytes=max_predict_bytes), device)

    @torch.inference_mode()
    def predict(
        self, image: np.ndarray, target: np.ndarray | None = None, alpha: float = 0.5, probabilities: bool = True
    ) -> Prediction:
        """image: (H, W, 3) uint8 RGB of any size; target: optional (H, W) uint8 class ids with IGNORE.

        Memory stays bounded whatever the image size and class count: full-size labels are made in bands
        (evaluate.labels_at_size) and probabilities, when asked for, at a reduced size."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DataError(f"expected an RGB uint8 image, got shape {image.shape} {image.dtype}")
        logits = forward_scaled(self.model, [image], self.config, self.device)[0]
        mask = labels_at_size(logits, image.shape[:2]).to(torch.uint8).cpu().numpy()
        probs = self._probabilities(logits, image.shape[:2]) if probabilities else None
        k = self.classes.num_classes
        share = (np.bincount(mask.ravel(), minlength=k)[:k] / mask.size).tolist()
        color = colorize(mask, self.classes)
        pred = Prediction(mask, color, overlay(image, mask, self.classes, alpha, color), probs, share)
        if target is not None:
            if target.shape != mask.shape:
                raise DataError(
                    f"the ground-truth mask is {target.shape[1]}x{target.shape[0]} but the image is "
                    f"{mask.shape[1]}x{mask.shape[0]}; upload the mask that belongs to this image"
                )
            bad = np.setdiff1d(np.unique(target), [*range(k), IGNORE])
            if bad.size:
                raise DataError(
                    f"the ground-truth mask holds labels {bad[:5].tolist()} but the model knows "
                    f"{k} classes (0..{k - 1}); is it the mask for this model's dataset?"
                )
            cm = confusion_matrix(torch.from_numpy(mask), torch.from_numpy(np.array(target)), k)  # may be read-only
            pred.metrics, pred.confusion = metrics_from_confusion(cm), cm
            pred.errors = error_map(mask, target)
        return pred

    def predict_file(
        self,
        image_path: str | Path,
        mask_path: str | Path | None = None,
        *,
        alpha: float = 0.5,
        probabilities: bool = False,
        name: str | None = None,
        max_side: int | None = None,
        decoded: tuple[np.ndarray, int] | None = None,
        run: Runner | None = None,
    ) -> FilePrediction:
        """Predict an image file; with its true mask (decoded with the model's classes), scored too.

        `name` is how messages name the image (default: as load_image_oriented does); `max_side` shrinks larger
        images first; `decoded` is (image, EXIF orientation) when the caller has read the file already (the app
        checks the student's file before it loads a model); `run` replaces self.predict (ZeroGPU's wrapper)."""
        image, orientation = decoded if decoded is not None else load_image_oriented(image_path, name)
        file_name = Path(image_path).name
        target = None
        if mask_path is not None:
            target = load_ground_truth(mask_path, image.shape, orientation, self.classes, file_name)
        shrunk_from = None
        if max_side is not None and max(image.shape[:2]) > max_side:
            shrunk_from = (image.shape[1], image.shape[0])
            image, target = shrink(image, target, max_side)
        predict = run or self.predict
        p = predict(image, target=target, alpha=alpha, probabilities=probabilities)
        return FilePrediction(file_name, image, target, p, shrunk_from)

    def _probabilities(self, logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        h, w = size
        f = max(1.0, max(h, w) / PROB_MAX_SIDE, (logits.shape[1] * h * w / PROB_MAX_VALUES) ** 0.5)
        lg = upsample(logits, (max(1, round(h / f)), max(1, round(w / f))))[0]
        if lg.shape[0] == 1:
            p = torch.sigmoid(lg[0])
            probs = torch.stack([1 - p, p])
        else:
            probs = lg.softmax(0)
        return probs.cpu().numpy().astype(np.float32, copy=False)


# -- ground truth -----------------------------------------------------------------------------------


class MaskIndex:
    """Ground-truth masks by file stem, built once: pairing n images with m masks is O(n + m)."""

    def __init__(self, masks: list[str], n_images: int):
        self.masks, self.n_images = list(masks), n_images
        self.by_stem: dict[str, str] = {}
        for m in self.masks:
            self.by_stem.setdefault(Path(m).stem.lower(), m)

    def mask_for(self, image_path: str) -> str | None:
        """An image's mask: same file stem (or stem + _mask/_gt...); with one image and one mask, that one."""
        if not self.masks:
            return None
        stem = Path(image_path).stem.lower()
        for suffix in MASK_SUFFIXES:
            if stem + suffix in self.by_stem:
                return self.by_stem[stem + suffix]
        if self.n_images == 1 and len(self.masks) == 1:
            return self.masks[0]
        return None

    def require_a_match(self, images: list[str]) -> None:
        """DataError when masks were given and none of them belongs to any of the images."""
        if self.masks and not any(self.mask_for(p) for p in images):
            names = ", ".join(Path(m).name for m in self.masks[:4])
            raise DataError(
                f"none of the masks ({names}) matches an image by file name. Name each mask like its "
                "image (cat.png and cat.png, or cat_mask.png)"
            )


def load_ground_truth(
    path: str | Path, image_shape: tuple[int, ...], orientation: int, classes: ClassSet, image_name: str
) -> np.ndarray:
    """A mask file -> (H, W) uint8 class ids with IGNORE, decoded with the model's classes and fitted to its
    upright image (see imageio.align_mask); DataError names the file otherwise."""
    from segdemo.data.masks import decode_mask, detect_encoding

    name = Path(path).name
    raw, mode = load_mask_raw(path, name)
    colors = list(classes.colors)
    enc = detect_encoding(raw, mode, classes.num_classes, colors)
    ids = decode_mask(raw, enc, num_classes=classes.num_classes, colormap=colors, name=name, classes_from="the model")
    return align_mask(ids, image_shape, orientation, mask_name=name, image_name=image_name)


def shrink(image: np.ndarray, mask: np.ndarray | None, max_side: int) -> tuple[np.ndarray, np.ndarray | None]:
    """An image (bilinear) and its mask (nearest) with the longest side at most max_side."""
    from PIL import Image

    h, w = image.shape[:2]
    f = max(h, w) / max_side
    if f <= 1:
        return image, mask
    size = (max(1, round(w / f)), max(1, round(h / f)))
    image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    if mask is not None:
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
    return image, mask
