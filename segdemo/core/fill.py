"""Assisted labelling: a few strokes, or a box, become a whole mask, offline and on a CPU.

Strokes: a linear classifier learns the painted pixels from the ImageNet EfficientNet-Lite0 encoder's features
(what the pixels look like in context, not only their colour), and its confident pixels, with the strokes, seed
a watershed on the photo, which settles the rest along the photo's own edges. Without the encoder (timm or its
weights not installed) the strokes alone seed the watershed. A box: GrabCut separates the object from what
surrounds it. Either way every pixel gets a class, and the caller shows the result before anything is saved.

Measured on 20 Oxford-IIIT Pet photos at 384 px (bench/label_speed.py's student, who adds a stroke where the
fill is wrong): strokes agree with the true masks on 97.6% of their pixels with 1.6 strokes per class, in about
0.1 s a fill; watershed alone 92%.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from segdemo.data.base import IGNORE, DataError

log = logging.getLogger(__name__)

MAX_CLASSES = 32  # a fill learns one linear map per class; a label set has far fewer
MAX_SIDE = 1024  # photos are stored at most 384 px a side (labelset); anything larger is refused, not resized
CONFIDENT = 0.95  # pixels the classifier is this sure of seed the watershed beside the strokes
L2 = 1e-2  # weight decay: a few painted pixels are separable by many maps; this keeps the gentlest
MAX_SAMPLES = 20_000  # painted pixels the classifier learns from (a seeded sample of a large stroke)
BOX_SIDE = 256  # GrabCut runs at this size at most (0.1-0.2 s here; 384 px takes twice as long)
BOX_ITERATIONS = 3
FEATURES_KEPT = 8  # photos whose encoder features are kept: a student refines the same photo stroke by stroke


@dataclass
class Filled:
    mask: np.ndarray  # (H, W) uint8 class ids, every pixel
    method: str  # how, in words: "learned from the strokes + watershed", "watershed", "GrabCut"
    ms: float  # how long it took


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError("the photo must be an RGB picture")
    if max(image.shape[:2]) > MAX_SIDE or min(image.shape[:2]) < 8:
        raise DataError(f"the photo must be 8 to {MAX_SIDE} pixels a side to fill it")


def _check_strokes(strokes: np.ndarray, shape: tuple[int, int], num_classes: int) -> np.ndarray:
    """The painted classes present; DataError for a wrong size or a class the set does not have."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise DataError(f"a fill takes 1 to {MAX_CLASSES} classes, got {num_classes}")
    if strokes.shape != shape:
        raise DataError(f"the strokes are {strokes.shape[1]}x{strokes.shape[0]} but the photo is {shape[1]}x{shape[0]}")
    values = np.unique(strokes)
    bad = [int(v) for v in values if v != IGNORE and not 0 <= v < num_classes]
    if bad:
        raise DataError(f"the strokes hold class {bad[0]}, which this set does not have ({num_classes} classes)")
    painted = values[values != IGNORE]
    if len(painted) == 0:
        raise DataError("paint a stroke of each class first; the fill starts from your strokes")
    return painted


def _watershed(image: np.ndarray, markers: np.ndarray) -> np.ndarray:
    """markers: 0 unknown, c + 1 for class c. Every pixel ends in a class: the photo is padded by a pixel (OpenCV
    marks the outermost pixels as lines), and a line between two regions joins one of them."""
    m = np.pad(markers.astype(np.int32), 1)
    cv2.watershed(cv2.cvtColor(np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge"), cv2.COLOR_RGB2BGR), m)
    m = m[1:-1, 1:-1]
    lines = m == -1
    if lines.any():
        grown = cv2.dilate(np.where(lines, 0, m).astype(np.uint8), np.ones((3, 3), np.uint8))
        m[lines] = grown[lines]
    return np.clip(m - 1, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _encoder() -> torch.nn.Module | None:
    from segdemo.core import pretrained

    if not pretrained.available():
        return None
    try:
        return pretrained.encoder(True).eval()
    except Exception:  # a damaged install: the plain watershed still fills
        log.warning("the ImageNet encoder could not be loaded; fills use the watershed alone", exc_info=True)
        return None


_features: OrderedDict[str, torch.Tensor] = OrderedDict()
_features_lock = threading.Lock()


def _features_of(image: np.ndarray, encoder: torch.nn.Module) -> torch.Tensor:
    """(C, H/2, W/2) features of the first four levels, up-sampled to stride 2; kept for the last few photos."""
    key = hashlib.sha1(image.tobytes() + str(image.shape).encode()).hexdigest()
    with _features_lock:
        if key in _features:
            _features.move_to_end(key)
            return _features[key]
    h, w = image.shape[:2]
    hp, wp = -(-h // 32) * 32, -(-w // 32) * 32
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1  # Lite0's normalisation
    x = F.pad(x, (0, wp - w, 0, hp - h), mode="replicate")
    with torch.inference_mode():
        levels = encoder(x)[:4]
        size = (hp // 2, wp // 2)
        feats = torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in levels], 1)[0]
    with _features_lock:
        _features[key] = feats
        while len(_features) > FEATURES_KEPT:
            _features.popitem(last=False)
    return feats


def preload() -> None:
    """Load the encoder now (a server's start), not at the first Fill."""
    _encoder()


def warm(image: np.ndarray) -> None:
    """Compute a photo's features ahead of its first fill: a student looks and paints for seconds after a photo
    opens, so the first Fill finds them ready (the encoder's pass is most of a first fill's time)."""
    encoder = _encoder()
    if encoder is not None:
        _check_image(image)
        _features_of(image, encoder)


@dataclass
class _Linear:
    """A linear map from standardised features to classes (`classes`: the class id of each output)."""

    linear: torch.nn.Linear
    mean: torch.Tensor
    std: torch.Tensor
    classes: np.ndarray

    def probabilities(self, feats: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
        """(K, H, W) for features (C, H/2, W/2) of a photo of this shape."""
        c, fh, fw = feats.shape
        with torch.inference_mode():
            p = self.linear((feats.reshape(c, -1).T - self.mean) / self.std).softmax(1).T.reshape(-1, fh, fw)
            p = F.interpolate(p[None], scale_factor=2, mode="bilinear", align_corners=False)[
                0, :, : shape[0], : shape[1]
            ]
        return p.numpy()

    def markers(self, probs: np.ndarray) -> np.ndarray:
        """Watershed markers from its probabilities: c + 1 where the map is sure of class c, else 0."""
        return np.where(probs.max(0) > CONFIDENT, self.classes[probs.argmax(0)].astype(np.int32) + 1, 0)


def _samples(
    feats: torch.Tensor, ids: np.ndarray, limit: int, rng: np.random.Generator
) -> tuple[torch.Tensor, np.ndarray]:
    """(features, class ids) of up to `limit` labelled pixels of one photo (each pixel's stride-2 feature cell, so
    a stroke one pixel thin still counts)."""
    c, _, fw = feats.shape
    ys, xs = np.nonzero(ids != IGNORE)
    if len(ys) > limit:
        keep = np.sort(rng.choice(len(ys), limit, replace=False))
        ys, xs = ys[keep], xs[keep]
    return feats.reshape(c, -1).T[torch.from_numpy((ys // 2) * fw + xs // 2)], ids[ys, xs]


def _fit(x: torch.Tensor, ids: np.ndarray, weight: np.ndarray) -> _Linear:
    """Weighted, L2-regularised logistic regression by L-BFGS from zero: convex, so the same answer every time,
    and a few dozen steps suffice because the features already separate most things."""
    classes = np.unique(ids)
    lookup = np.zeros(256, np.int64)
    lookup[classes] = np.arange(len(classes))
    y = torch.from_numpy(lookup[ids])
    w = torch.from_numpy(weight / weight.sum()).float()
    mean, std = x.mean(0), x.std(0, correction=0) + 1e-3
    xn = (x - mean) / std
    linear = torch.nn.Linear(x.shape[1], len(classes))
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(linear.parameters(), max_iter=50, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (F.cross_entropy(linear(xn), y, reduction="none") * w).sum() + L2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return _Linear(linear, mean, std, classes)


def fill_strokes(
    image: np.ndarray, strokes: np.ndarray, num_classes: int, proposal: np.ndarray | None = None
) -> Filled:
    """A whole mask from a photo's strokes: (H, W) uint8 class ids, IGNORE where unpainted.

    `proposal`: what the page showed before these strokes (a LabelModel's guess, or an earlier fill), the same
    shape and classes. The strokes then correct it: the map learns from both, the strokes weighing as much as
    the whole proposal, so a region painted over changes and the rest stays as proposed."""
    t0 = time.perf_counter()
    _check_image(image)
    painted = _check_strokes(strokes, image.shape[:2], num_classes)
    if proposal is not None and proposal.shape != strokes.shape:
        raise DataError("the proposed mask is not the photo's size; open the photo again")
    markers = np.where(strokes == IGNORE, 0, strokes.astype(np.int32) + 1)
    shown = np.unique(proposal[proposal < num_classes]) if proposal is not None else painted
    encoder = _encoder() if len(np.union1d(painted, shown)) > 1 else None
    method = "watershed from your strokes"
    if encoder is not None:
        feats = _features_of(image, encoder)
        rng = np.random.default_rng(0)
        x, ids = _samples(feats, strokes, MAX_SAMPLES, rng)
        weight = np.ones(len(ids))
        if proposal is not None:
            around = cv2.dilate((strokes != IGNORE).astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
            xp, idp = _samples(feats, np.where(around | (proposal >= num_classes), IGNORE, proposal), 4000, rng)
            x, ids = torch.cat([x, xp]), np.concatenate([ids, idp])
            weight = np.concatenate([weight * max(1.0, len(idp) / max(1, len(weight))), np.ones(len(idp))])
        fitted = _fit(x, ids, weight)
        learned = fitted.markers(fitted.probabilities(feats, strokes.shape))
        markers = np.where(strokes != IGNORE, markers, learned)
        method = "learned from your strokes, then a watershed along the photo's edges"
    mask = _watershed(image, markers)
    mask[strokes != IGNORE] = strokes[strokes != IGNORE]  # the student's own strokes are never overruled
    return Filled(mask, method, 1e3 * (time.perf_counter() - t0))


class LabelModel:
    """What a label set's saved photos teach: a linear map from the ImageNet encoder's features to the set's
    classes (the smallest decoder there is), fitted in a fraction of a second, that pre-labels the next photo.
    Measured on Oxford-IIIT Pet: a next photo's guess agrees with the truth on 81% of its pixels after 2 saved
    photos, 87% after 3 and 93% after 6; the student corrects the rest."""

    PIXELS_PER_PHOTO = 4000

    def __init__(self, fitted: _Linear, photos: int):
        self.fitted, self.photos = fitted, photos

    @classmethod
    def fit(cls, pairs: list[tuple[np.ndarray, np.ndarray]], num_classes: int) -> LabelModel | None:
        """From saved (photo, class ids with IGNORE unpainted) pairs; None without the encoder or with fewer
        than two classes among the saved pixels (nothing to tell apart yet)."""
        encoder = _encoder()
        usable = [(im, m) for im, m in pairs if (m != IGNORE).any()]
        if encoder is None or not usable:
            return None
        rng = np.random.default_rng(0)
        xs, ids = [], []
        for image, mask in usable:
            _check_image(image)
            _check_strokes(mask, image.shape[:2], num_classes)
            x, i = _samples(_features_of(image, encoder), mask, cls.PIXELS_PER_PHOTO, rng)
            xs.append(x)
            ids.append(i)
        all_ids = np.concatenate(ids)
        if len(np.unique(all_ids)) < 2:
            return None
        return cls(_fit(torch.cat(xs), all_ids, np.ones(len(all_ids))), photos=len(usable))

    def prelabel(self, image: np.ndarray) -> Filled:
        """The model's guess for a photo, every pixel a class (its sure pixels seed a watershed)."""
        t0 = time.perf_counter()
        _check_image(image)
        encoder = _encoder()
        assert encoder is not None  # fit() returns no model without it
        probs = self.fitted.probabilities(_features_of(image, encoder), image.shape[:2])
        markers = self.fitted.markers(probs)
        if not markers.any():  # sure of nothing: its best guess everywhere
            mask = self.fitted.classes[probs.argmax(0)].astype(np.uint8)
        else:
            mask = _watershed(image, markers)
        n = self.photos
        method = f"the model's guess, learned from {n} saved photo{'s' if n != 1 else ''}"
        return Filled(mask, method, 1e3 * (time.perf_counter() - t0))


def kept_share(shown: np.ndarray, saved: np.ndarray) -> float | None:
    """How much of what the page proposed the student kept: the share of saved (labelled) pixels whose class is
    the proposed one. "The model had 93% right"; None when nothing is saved."""
    labelled = saved != IGNORE
    if shown.shape != saved.shape or not labelled.any():
        return None
    return float((shown[labelled] == saved[labelled]).mean())


def fill_box(
    image: np.ndarray,
    box: tuple[float, float, float, float],
    object_class: int,
    num_classes: int,
    background_class: int = 0,
) -> Filled:
    """One object inside a box (x0, y0, x1, y1 in photo pixels): GrabCut's object pixels get object_class, the
    rest background_class. The box may reach past the photo (it is clipped); one under 4 px is refused."""
    t0 = time.perf_counter()
    _check_image(image)
    for c in (object_class, background_class):
        if not 0 <= c < num_classes or num_classes > MAX_CLASSES:
            raise DataError(f"class {c} is not one of this set's {num_classes} classes")
    h, w = image.shape[:2]
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise DataError("a box is four numbers: left, top, right, bottom") from None
    if not all(np.isfinite([x0, y0, x1, y1])):
        raise DataError("a box is four numbers: left, top, right, bottom")
    x0, x1 = sorted((min(max(x0, 0), w), min(max(x1, 0), w)))
    y0, y1 = sorted((min(max(y0, 0), h), min(max(y1, 0), h)))
    if x1 - x0 < 4 or y1 - y0 < 4:
        raise DataError("draw the box around the object, inside the photo (it is smaller than 4 pixels there)")
    f = min(1.0, BOX_SIDE / max(h, w))
    small = cv2.resize(image, (max(8, round(w * f)), max(8, round(h * f))), interpolation=cv2.INTER_AREA)
    rect = (int(x0 * f), int(y0 * f), max(2, int((x1 - x0) * f)), max(2, int((y1 - y0) * f)))
    gc = np.zeros(small.shape[:2], np.uint8)
    covers_all = rect[2] >= small.shape[1] - 1 and rect[3] >= small.shape[0] - 1
    if covers_all:  # GrabCut needs some background outside the box: the whole photo is the object
        inside = np.ones(small.shape[:2], np.float32)
    else:
        bg, fg = np.zeros((1, 65)), np.zeros((1, 65))
        cv2.grabCut(cv2.cvtColor(small, cv2.COLOR_RGB2BGR), gc, rect, bg, fg, BOX_ITERATIONS, cv2.GC_INIT_WITH_RECT)
        inside = np.isin(gc, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)
    inside = cv2.resize(inside, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
    mask = np.where(inside, object_class, background_class).astype(np.uint8)
    return Filled(mask, "GrabCut: the object inside your box", 1e3 * (time.perf_counter() - t0))
