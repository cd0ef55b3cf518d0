"""Prediction latency and memory of the default model.

- predict: Predictor.predict on a 512x512 RGB image, the real path (resize to the model's size, forward,
  up-sample logits, softmax, argmax, colourise, overlay); the median of --repeats calls.
- forward: the model's forward pass alone at its own input size, timed in the same rounds (interleaved).
- peak RSS (VmHWM) of a fresh process that trains one epoch of the quick preset, and of one that loads
  the model and predicts once.

    python bench/inference.py [--checkpoint checkpoints/shapes_unet.safetensors] [--size 512] [--repeats 30]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO, load, machine, median, peak_rss_mb

from segdemo.core.checkpoint import Checkpoint
from segdemo.core.config import quick_cpu_preset
from segdemo.core.encoders import build_model
from segdemo.core.predict import Predictor
from segdemo.data.builtin import CLASSES, make_sample

TRAIN_ONE_EPOCH = """
import tempfile
from segdemo.core.config import quick_cpu_preset
from segdemo.data.builtin import open_builtin
from segdemo.training.trainer import Trainer
cfg = quick_cpu_preset()
cfg.train.epochs = 1
with tempfile.TemporaryDirectory() as d:
    assert type(Trainer(cfg, d, splits=open_builtin(cfg.data)).run()).__name__ == "Done"
"""

PREDICT_ONCE = """
import sys
sys.path.insert(0, "bench")
from inference import make_predictor, test_image
predictor, _ = make_predictor({checkpoint!r})
predictor.predict(test_image({size}))
"""


def make_predictor(checkpoint: str) -> tuple[Predictor, str]:
    path = Path(checkpoint)
    if path.is_file():
        return Predictor.from_path(path), f"trained weights from {path}"
    cfg = quick_cpu_preset()
    cfg.model.num_classes = CLASSES.num_classes
    model = build_model(cfg.model).eval()
    note = f"RANDOM weights ({path} not found), default config"
    return Predictor(Checkpoint(model, cfg, CLASSES, meta={})), note


def test_image(size: int) -> np.ndarray:
    return make_sample(np.random.default_rng(0), size)[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "shapes_unet.safetensors"))
    p.add_argument("--size", default="512", help="the RGB test image: a side (square) or WxH, e.g. 480x360")
    p.add_argument("--image", help="a real photo to predict instead of a drawn one (e.g. a CamVid frame)")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--no-rss", action="store_true", help="skip the two peak-memory subprocesses")
    args = p.parse_args()
    print(machine(), "|", load(), flush=True)

    predictor, source = make_predictor(args.checkpoint)
    cfg = predictor.config
    print(f"model: {source}; width {cfg.model.width}, depth {cfg.model.depth}, input {cfg.data.image_size}px")
    w, _, h = args.size.partition("x")
    w, h = int(w), int(h or w)
    if args.image:
        from segdemo.imageio import load_image

        image = load_image(args.image)
        h, w = image.shape[:2]
    else:
        image = test_image(max(w, h))[:h, :w]
    from segdemo.core.transforms import eval_resize

    scaled = eval_resize(image, cfg.data)  # the model's input: the whole image at the training scale
    x = torch.randn(1, 3, *scaled.shape[:2])

    def forward():
        with torch.inference_mode():
            predictor.model(x)

    for _ in range(3):
        predictor.predict(image)
        forward()
    t_pred, t_fwd = [], []
    for _ in range(args.repeats):  # interleaved: each round times one of each
        t0 = time.perf_counter()
        predictor.predict(image)
        t_pred.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        forward()
        t_fwd.append(time.perf_counter() - t0)
    pred_ms, fwd_ms = 1e3 * median(t_pred), 1e3 * median(t_fwd)
    print(
        f"predict {w}x{h} (model input {scaled.shape[1]}x{scaled.shape[0]}): median {pred_ms:.1f} ms "
        f"(min {1e3 * min(t_pred):.1f}, "
        f"max {1e3 * max(t_pred):.1f}); forward alone {fwd_ms:.2f} ms | {load()}",
        flush=True,
    )
    line = f"predict_ms={pred_ms:.1f} forward_ms={fwd_ms:.2f}"
    if not args.no_rss:
        train_mb = peak_rss_mb(TRAIN_ONE_EPOCH)
        pred_mb = peak_rss_mb(PREDICT_ONCE.format(checkpoint=args.checkpoint, size=max(w, h)))
        print(f"peak RSS: training 1 epoch {train_mb:.0f} MB, predicting once {pred_mb:.0f} MB | {load()}")
        line += f" train_peak_rss_mb={train_mb:.0f} predict_peak_rss_mb={pred_mb:.0f}"
    print(line)


if __name__ == "__main__":
    main()
