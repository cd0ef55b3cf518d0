"""Memory a model, a training run or a prediction will need, estimated BEFORE anything is allocated.

A shared server must refuse a request that would exhaust its memory, not find out by being killed.
Parameters are counted on PyTorch's meta device (shapes only, no memory); activation memory comes from
a formula fitted to measured peaks (bench/README.md, "Memory budget"): a U-Net step keeps about 35 float32
values per pixel per first-level channel for the backward pass (lower levels add half as much again in
total), the loss about 8 per pixel per class. The estimates err on the high side.

The budget itself: SEGDEMO_MEMORY_BUDGET_MB if set, else three quarters of the machine's memory (or its
cgroup limit) less 1 GiB for the server itself. A training run may use its share of that (runs allowed at
once + 1 shares: one is kept for predictions and data checks); one prediction at most a quarter of it,
capped at PREDICT_CAP (1 GiB).
"""

from __future__ import annotations

import dataclasses
import os
from functools import lru_cache

import torch

from segdemo.core.config import ModelConfig, RunConfig
from segdemo.core.evaluate import OUTPUT_BAND_BYTES, max_batch_pixels
from segdemo.core.transforms import max_scaled_pixels
from segdemo.errors import BudgetError  # noqa: F401  (re-exported)

FLOAT = 4  # bytes per float32
TRAIN_ACTIVATION_FLOATS = 35  # per pixel per first-level channel, forward + saved for backward (fitted)
INFER_ACTIVATION_FLOATS = 8  # per pixel per first-level channel, inference peak (fitted)
LOSS_FLOATS_PER_CLASS = 8  # logits, softmax, one-hot, products of CE + Dice
OPTIMISER_COPIES = 4  # weights, gradients, AdamW's two moments
SAVED_COPIES = 3  # a resumable checkpoint holds the weights and AdamW's two moments
RESNET_WIDTH = 64  # a ResNet stem's channels at half resolution: count it like a 32-wide first level
# EfficientNet-Lite0's expanded blocks at half and quarter resolution: count it like a 24-wide first level
# (measured: width 16, 256 px, batch 8, one training step 1166 MB; this estimate 1.8 GB, a plain U-Net's 1.5x)
LITE_WIDTH = 24
MAX_PARAMETERS = 250_000_000  # a 1 GB checkpoint's worth (checkpoint.MAX_FILE_BYTES); ours are far smaller
PREDICT_CAP = 1 << 30


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def machine_memory() -> int:
    """Physical memory, or the container's cgroup limit when that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def server_budget() -> int:
    """Bytes the app may spend on runs and predictions together (SEGDEMO_MEMORY_BUDGET_MB overrides)."""
    env = os.environ.get("SEGDEMO_MEMORY_BUDGET_MB")
    if env:
        return max(64, int(env)) << 20
    return max(512 << 20, int(machine_memory() * 0.75) - (1 << 30))


def run_budget(max_concurrent: int) -> int:
    """One training run's share of the server budget."""
    return server_budget() // (max(1, max_concurrent) + 1)


def predict_budget() -> int:
    return min(PREDICT_CAP, server_budget() // 4)


def expected_state(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """name -> (shape, dtype) of the state dict the config builds, without allocating it."""
    return dict(_describe(*_key(cfg))[0])


def parameter_count(cfg: ModelConfig) -> int:
    """Parameters of the model a config builds, counted without allocating them."""
    return _describe(*_key(cfg))[1]


def _key(cfg: ModelConfig) -> tuple:
    return cfg.encoder, cfg.depth, cfg.width, cfg.upsampling, cfg.num_classes, cfg.block


@lru_cache(maxsize=64)
def _describe(encoder: str, depth: int, width: int, upsampling: str, num_classes: int, block: str) -> tuple[tuple, int]:
    """(state dict as ((name, (shape, dtype)), ...), parameter count) of a model built on the meta device
    (never with pretrained weights: only the shapes matter)."""
    from segdemo.core.encoders import build_model

    cfg = ModelConfig(
        encoder=encoder, depth=depth, width=width, upsampling=upsampling, num_classes=num_classes, block=block
    )
    with torch.device("meta"):  # shapes only: a 7 GB model costs nothing to describe here
        model = build_model(cfg)
    state = tuple((k, (tuple(v.shape), v.dtype)) for k, v in model.state_dict().items())
    return state, sum(p.numel() for p in model.parameters())


def _first_level_width(cfg: ModelConfig) -> int:
    if cfg.encoder == "unet":
        return cfg.width
    return max(cfg.width, LITE_WIDTH if cfg.encoder == "efficientnet_lite0" else RESNET_WIDTH // 2)


def _eval_pixels(cfg: RunConfig) -> tuple[int, int, int]:
    """(pixels the net sees at once predicting one image, the same in an evaluation batch, pixels of one scaled
    image's class scores).

    Evaluation and prediction run the whole image at the training scale (evaluate.forward_scaled), which for a
    "short" scale can be up to transforms.MAX_ASPECT times the square; a sliding window bounds the net's part."""
    whole = max_scaled_pixels(cfg.data)
    one = min(whole, cfg.data.window**2) if cfg.data.window else whole
    return one, max(one, min(whole, max_batch_pixels(cfg))), whole


def training_bytes(cfg: RunConfig, num_classes: int | None = None) -> int:
    """Peak memory of a run: weights and optimiser state, plus the largest of one training step (activations,
    loss, the batch, all at the crop size), one evaluation pass on whole scaled images and the resumable save."""
    m, pixels = cfg.model, cfg.data.crop**2
    k = num_classes or m.num_classes
    b = cfg.train.batch_size
    n = parameter_count(dataclasses.replace(m, num_classes=k))
    params = n * OPTIMISER_COPIES * FLOAT
    # last.safetensors: contiguous CPU copies of the weights and AdamW's two moments, then safetensors builds
    # the file's bytes from them (a second copy) before writing: a width-64 model's save alone is ~1 GB
    save = n * SAVED_COPIES * FLOAT * 2
    act = TRAIN_ACTIVATION_FLOATS * _first_level_width(m) * pixels * b * FLOAT
    loss = LOSS_FLOATS_PER_CLASS * k * pixels * b * FLOAT
    batch = pixels * b * (3 * FLOAT + 8)  # normalised images + int64 masks
    _, net_px, score_px = _eval_pixels(cfg)
    evaluation = (INFER_ACTIVATION_FLOATS * _first_level_width(m) * net_px + 2 * k * max(net_px, score_px)) * FLOAT
    return params + max(act + loss + batch, evaluation + OUTPUT_BAND_BYTES * 2, save)


def inference_bytes(cfg: RunConfig, out_pixels: int = 0, num_classes: int | None = None) -> int:
    """Peak memory of predicting one image: weights, activations of the whole image at the training scale (or
    of one sliding window), its class scores at that scale, and the scores up-sampled to the output size (in
    bands, so at most OUTPUT_BAND_BYTES of them at once)."""
    m = cfg.model
    k = num_classes or m.num_classes
    net_px, _, score_px = _eval_pixels(cfg)
    params = parameter_count(dataclasses.replace(m, num_classes=k)) * FLOAT
    act = INFER_ACTIVATION_FLOATS * _first_level_width(m) * net_px * FLOAT + 2 * k * score_px * FLOAT
    out = min(OUTPUT_BAND_BYTES * 2, 2 * k * out_pixels * FLOAT) + out_pixels * 24  # + mask, colour, overlay
    return params + act + out


def check_training(cfg: RunConfig, budget: int, num_classes: int | None = None) -> int:
    """Refuse (BudgetError) settings whose training step would not fit in `budget` bytes; else the estimate."""
    need = training_bytes(cfg, num_classes)
    if need > budget:
        raise BudgetError(
            f"these settings need about {gib(need)} of memory to train, and this server allows {gib(budget)} "
            f"per run. Lower the batch size (now {cfg.train.batch_size}), the image size (now "
            f"{cfg.data.image_size} px, crop {cfg.data.crop} px) or the width (now {cfg.model.width}); a host can "
            "raise the limit "
            "with SEGDEMO_MEMORY_BUDGET_MB"
        )
    return need


def check_model(cfg: RunConfig, budget: int | None, what: str = "this checkpoint") -> int:
    """Refuse a model that is absurdly large or (with a budget) would not fit in it to predict one image."""
    n = parameter_count(cfg.model)
    if n > MAX_PARAMETERS:
        raise BudgetError(
            f"{what} describes a model of {n / 1e6:.0f} M parameters; segdemo models have at most "
            f"{MAX_PARAMETERS / 1e6:.0f} M. It is not a segdemo checkpoint"
        )
    need = inference_bytes(cfg)
    if budget is not None and need > budget:
        raise BudgetError(
            f"{what} needs about {gib(need)} of memory to predict one image, and this server "
            f"allows {gib(budget)} per prediction; use a smaller model (image size, width)"
        )
    return need
