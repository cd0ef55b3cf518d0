"""How unlike a model's training images a new image is: cheap statistics kept in the checkpoint, compared at
Predict time, so the page can say "this photo is unlike anything this model saw" instead of confident nonsense.

A heuristic with two signals, each reported in words only when it is far outside the training images':
- size: when every training image had one size (synthetic data such as the built-in shapes), an image of
  another size and shape came from somewhere else;
- colour and texture: per-image mean of each channel, grey-level contrast, saturation and edge strength at
  64 px, each compared with the training images' spread (|z| > Z_LIMIT, with a floor on the spread).
It never blocks a prediction and cannot prove an image familiar: silence means "no obvious difference".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from segdemo.data.base import PairSource

FEATURES = ("red", "green", "blue", "contrast", "saturation", "edges")
WORDS = {
    "red": "colours",
    "green": "colours",
    "blue": "colours",
    "contrast": "contrast",
    "saturation": "colour saturation",
    "edges": "texture (edge strength)",
}
SIDE = 64  # features are measured at this short side, whatever the image's size
Z_LIMIT = 4.0
FLOOR = (0.03, 0.03, 0.03, 0.02, 0.03, 0.004)  # smallest spread a feature is judged by
SAMPLE = 64  # training images measured


def image_features(image: np.ndarray) -> np.ndarray:
    """(len(FEATURES),) float: the image's colour and texture statistics at SIDE px on its short side."""
    import cv2

    h, w = image.shape[:2]
    f = SIDE / max(1, min(h, w))
    small = cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    x = small.astype(np.float32) / 255
    grey = x.mean(2)
    sat = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)[..., 1].astype(np.float32) / 255
    edges = np.abs(np.diff(grey, axis=1)).mean() + np.abs(np.diff(grey, axis=0)).mean()
    return np.array([*x.mean((0, 1)), grey.std(), sat.mean(), edges], np.float64)


def training_stats(source: PairSource, k: int = SAMPLE) -> dict[str, Any]:
    """The statistics a checkpoint keeps of its training images (a spread-out sample of k of them)."""
    n = len(source)
    m = min(n, k)
    idx = sorted({round(i * (n - 1) / max(1, m - 1)) for i in range(m)})
    feats, sizes = [], []
    for i in idx:
        image = source.load(i)[0]
        feats.append(image_features(image))
        sizes.append(image.shape[:2])
    if not feats:
        return {}
    f = np.array(feats)
    hw: np.ndarray = np.array(sizes)
    return {
        "n": len(feats),
        "features": list(FEATURES),
        "mean": f.mean(0).round(5).tolist(),
        "std": f.std(0).round(5).tolist(),
        "one_size": [int(hw[0, 0]), int(hw[0, 1])] if (hw == hw[0]).all() else None,
    }


def unlike(stats: dict[str, Any] | None, image: np.ndarray) -> str | None:
    """A plain sentence when the image is far outside the training images' statistics, else None."""
    if not stats or stats.get("features") != list(FEATURES):
        return None
    reasons = []
    one = stats.get("one_size")
    h, w = image.shape[:2]
    if one and (abs(h / one[0] - 1) > 0.25 or abs(w / one[1] - 1) > 0.25):
        reasons.append(f"its size ({w}x{h}; every training image was {one[1]}x{one[0]})")
    z = (image_features(image) - np.array(stats["mean"])) / np.maximum(np.array(stats["std"]), FLOOR)
    far = []
    for name, v in zip(FEATURES, z, strict=True):
        if abs(v) > Z_LIMIT and WORDS[name] not in far:
            far.append(WORDS[name])
    if far:
        reasons.append("its " + ", ".join(far))
    if not reasons:
        return None
    return (
        "This image looks unlike the images this model was trained on ("
        + "; ".join(reasons)
        + "). It can only answer in its own classes, so expect its answer here to be meaningless."
    )


_BUILTIN_STATS: dict[tuple, dict] = {}


def stats_of(meta: dict[str, Any], config) -> dict[str, Any] | None:
    """A checkpoint's training-image statistics: kept in its meta (trained_on.images) by runs since they were
    added; for an older checkpoint of the built-in shapes (the shipped model) drawn again from the same seed."""
    trained_on = meta.get("trained_on")
    on: dict[str, Any] = trained_on if isinstance(trained_on, dict) else {}
    if isinstance(on.get("images"), dict) and on["images"]:
        return on["images"]
    if config is None or config.data.source != "builtin":
        return None
    from dataclasses import replace

    from segdemo.data.builtin import open_builtin

    key = (config.data.seed, config.data.builtin_train)
    if key not in _BUILTIN_STATS:
        data = replace(config.data, builtin_train=min(SAMPLE, config.data.builtin_train), builtin_val=1)
        _BUILTIN_STATS[key] = training_stats(open_builtin(data).train)
    return _BUILTIN_STATS[key]
