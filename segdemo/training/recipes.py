"""Presets as time budgets: from the data's image sizes and this machine's measured speed, pick the scale,
crop, width and epochs of a run that ends when its budget does.

A preset names a budget ("about a minute", "about 10 minutes", "GPU") and a few fixed choices (width,
batch, learning rate). The rest is planned per dataset: the training scale is the largest one (a multiple
of 32, at most the images' own short side and the preset's cap) at which the budget still buys the
preset's minimum number of epochs, measured by timing a few real training steps of the model on this
machine (speedups.py; cached, so planning twice costs nothing). The run's time limit is the budget, and
the learning-rate schedule follows elapsed time as well as steps, so it reaches its end at the budget
whichever comes first (trainer.schedule_progress).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from segdemo.core.config import LITE, DataConfig, ModelConfig, RunConfig, TrainConfig, use_encoder
from segdemo.core.speedups import Speedups
from segdemo.data.base import PairSource, Splits


@dataclass(frozen=True)
class Preset:
    key: str  # the CLI's --preset and the /train API's value
    label: str  # what the Train tab shows
    seconds: float  # the time budget: the run stops here with its best checkpoint, the schedule ends here
    width: int
    batch_size: int
    learning_rate: float
    max_scale: int  # largest training scale (short side, px) it will choose
    min_epochs: int  # the scale comes down until the budget buys at least this many epochs
    gpu: bool = False
    device: str = "auto"
    # with the ImageNet encoder: a pretrained net needs fewer epochs and gains more from a larger scale
    # (Oxford Pet mini, minute preset: 128 px 0.88, 192 px 0.90 test mIoU; bench/README.md)
    lite_max_scale: int = 192
    lite_min_epochs: int = 10
    instant: bool = False  # the frozen ImageNet encoder, features cached, only the decoder trains (instant.py)


PRESETS: tuple[Preset, ...] = (
    Preset(
        "instant",
        "Instant: frozen ImageNet encoder (20 s)",
        20,
        width=16,
        batch_size=4,  # twice the updates of 8 in the same seconds: on 20 pet photos 0.85 vs 0.80 val mIoU in 20 s
        learning_rate=3e-3,
        max_scale=160,
        min_epochs=5,  # priced by a full step's probe, which a decoder-only step takes a fraction of
        lite_max_scale=160,
        lite_min_epochs=5,
        instant=True,
    ),
    Preset(
        "minute", "About a minute (CPU)", 60, width=8, batch_size=8, learning_rate=3e-3, max_scale=128, min_epochs=10
    ),
    Preset(
        "10min",
        "About 10 minutes (CPU)",
        600,
        width=16,
        batch_size=8,
        learning_rate=3e-3,
        max_scale=256,
        min_epochs=40,
        lite_max_scale=256,
        lite_min_epochs=15,
    ),
    Preset(
        "gpu",
        "GPU, about 10 minutes",
        600,
        width=32,
        batch_size=16,
        learning_rate=2e-3,
        max_scale=512,
        min_epochs=40,
        gpu=True,
        lite_max_scale=512,
        lite_min_epochs=30,
    ),
)
BY_KEY = {p.key: p for p in PRESETS}
DEFAULT = "minute"
RARE_SHARE = 0.01  # a class under 1% of the pixels is rare: weigh classes (measured on CamVid, bench/README.md)
SPARE_EPOCHS = 1.5
MAX_EPOCHS = 100  # a plan never asks for more (the Train tab's slider ends here): tiny data then ends early
MIN_SCALE = 64  # below this a depth-4 U-Net sees a 4x4 (or smaller) bottleneck: more epochs cannot make up for it
SETUP_S = 4.0  # opening the data, the speed probe, building the model: spent before the first step
EVAL_COST = 0.35  # a validation image costs about this share of a training image of the same pixels
STEP_OVERHEAD = 1.35  # a real step (data, augmentation, optimiser) over the probe's forward + backward
PROBE_SIDE = 128  # one timed probe at this size (or the top scale, if smaller) prices every scale
MIN_PROBE_SIDE = 64  # probes are taken at 64, 96 or 128 px: three size classes
SAMPLE_IMAGES = 24  # images read to learn the data's sizes
LITE_WIDTH = 16  # the decoder over the ImageNet encoder: its levels carry 16..320 channels, so 8 starves it
TRANSFER = (
    "ImageNet encoder: real photos, and an encoder that has already seen 1.3 million of them measured far better "
    "than a net learning from scratch in the same budget (bench/README.md)"
)


INSTANT = (
    "Instant mode: the ImageNet encoder stays as it is and each photo's features are computed once, so only the "
    "small decoder trains and a first prediction comes within seconds"
)


def preset(key: str) -> Preset:
    from segdemo.errors import ConfigError

    try:
        return BY_KEY[key]
    except KeyError:
        raise ConfigError(f"unknown preset {key!r}; choose one of {', '.join(BY_KEY)}") from None


@dataclass(frozen=True)
class DataShape:
    """What planning needs to know of a dataset: how many images, how big (medians of a sample), and the
    pixel share of its rarest class in that sample (1.0 when unknown)."""

    n_train: int
    n_val: int
    short: int
    long: int
    rarest: float = 1.0

    @classmethod
    def of(cls, splits: Splits) -> DataShape:
        short, long, rarest = _sample(splits.train, splits.classes.num_classes)
        return cls(len(splits.train), len(splits.val), short, long, rarest)


def _sample(source: PairSource, num_classes: int) -> tuple[int, int, float]:
    """(median short side, median long side, rarest class's pixel share) over up to SAMPLE_IMAGES pairs."""
    n = len(source)
    idx: list[int] = np.linspace(0, n - 1, min(n, SAMPLE_IMAGES)).round().astype(int).tolist() if n else []
    sides, counts = [], np.zeros(max(num_classes, 1), np.int64)
    for i in dict.fromkeys(int(i) for i in idx):
        image, mask = source.load(i)
        sides.append(sorted(image.shape[:2]))
        valid = mask[mask < len(counts)]
        counts += np.bincount(valid.ravel(), minlength=len(counts))[: len(counts)]
    if not sides:
        return 128, 128, 1.0
    a = np.array(sides)
    rarest = float(counts.min() / counts.sum()) if counts.sum() else 1.0
    return int(np.median(a[:, 0])), int(np.median(a[:, 1])), rarest


@dataclass
class Plan:
    config: RunConfig
    why: str  # one line for the page and the CLI
    epoch_s: float  # the estimate behind it: seconds an epoch
    epochs_fit: int  # and how many fit the budget (config.train.epochs leaves room for more)


def seconds_per_pixel(model: ModelConfig, train: TrainConfig, side: int) -> tuple[float, Speedups]:
    """Training seconds per image pixel on this machine, from one timed probe at side x side (cached), and
    the precision and memory format the probe found fastest.

    Per-pixel cost falls a little as images grow (fixed costs per step spread thinner), so estimates for
    scales above the probe's are slightly pessimistic: the run then ends by its time limit, not early."""
    from segdemo.core.speedups import choose_speedups, measured_step_seconds, pick_device, probe_threads
    from segdemo.training.host import cpu_training_threads

    # priced once per size class and class-count class, whatever the data: a visitor cycling image sizes or
    # class counts cannot buy a fresh multi-second probe with each request (the per-pixel cost barely moves)
    side = max(MIN_PROBE_SIDE, side - side % 32)
    model = dataclasses.replace(model, num_classes=max(2, 1 << max(0, model.num_classes - 1).bit_length()))
    threads = cpu_training_threads() if pick_device(train.device).type == "cpu" else torch.get_num_threads()
    with probe_threads(threads):  # measure with the threads a run will use; a running training's stay
        sp = choose_speedups(model, train, side)
        probe_side, probe_images, step_s = measured_step_seconds(model, sp, side)
    return STEP_OVERHEAD * step_s / (probe_images * probe_side**2), sp


def plan(
    p: Preset,
    shape: DataShape,
    base: RunConfig | None = None,
    per_pixel: float | None = None,
    encoder: str | None = None,
) -> Plan:
    """The run config for preset p on data of this shape: base's data source and classes, the preset's model
    and optimiser, and the largest scale whose epochs fit the budget at least p.min_epochs times.

    per_pixel: training seconds per pixel; measured on this machine when not given. encoder: the user's choice,
    else choose_encoder's for the data (the probe then times that encoder: each is priced by its own speed)."""
    cfg = copy.deepcopy(base) if base is not None else RunConfig()
    if p.instant:
        encoder, encoder_why = LITE, INSTANT
    elif encoder:
        encoder_why = f"{encoder} encoder: your choice"
    else:
        encoder, encoder_why = choose_encoder(cfg.data)
    use_encoder(cfg, encoder)
    cfg.train.freeze_encoder = p.instant
    if p.instant:
        cfg.data.augment = False  # each image's features are computed once: the same crop every epoch
    if encoder == LITE:
        p = replace(p, width=max(p.width, LITE_WIDTH), max_scale=p.lite_max_scale, min_epochs=p.lite_min_epochs)
    cfg.model.width, cfg.model.depth = p.width, 4
    t = cfg.train
    t.batch_size, t.learning_rate, t.schedule = p.batch_size, p.learning_rate, "warmup_cosine"
    t.time_budget_s = float(p.seconds)
    t.lr_follows_time = True
    no_gpu = p.gpu and not torch.cuda.is_available()
    t.device = "cuda" if p.gpu and not no_gpu else t.device
    # instant mode has no random crops to show the rest of a photo: its long side is the scale, so one square
    # crop (padded with the ignore index) holds the whole photo, and each photo's features are computed once
    cfg.data.resize, cfg.data.crop_size = ("long" if p.instant else "short"), None
    side = shape.long if p.instant else shape.short
    rare = shape.rarest < RARE_SHARE
    if rare:  # CamVid, 8 epochs at 128 px: val mIoU 0.27 with five classes at 0 (ce_dice), 0.33+ weighted
        t.loss = "weighted_ce"
    usable = max(1.0, p.seconds * 0.95 - SETUP_S)
    aspect = shape.long / max(shape.short, 1)
    ladder = _scales(min(side, p.max_scale), min(side, MIN_SCALE))
    if per_pixel is None:
        per_pixel, sp = seconds_per_pixel(cfg.model, t, min(ladder[0], PROBE_SIDE))
        # the run uses what the probe chose instead of measuring again before its first step
        if t.precision == "auto":
            t.precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[sp.autocast_dtype]
        if t.channels_last == "auto":
            t.channels_last = "on" if sp.channels_last else "off"
    chosen: tuple[int, int, float, float] | None = None
    for scale in ladder:
        per_image = per_pixel * scale**2
        epoch_s = shape.n_train * per_image + shape.n_val * per_image * (1 if p.instant else aspect) * EVAL_COST
        epochs = int(usable // epoch_s)
        chosen = (scale, epochs, epoch_s, per_image)
        if epochs >= p.min_epochs:
            break
    assert chosen is not None  # the ladder is never empty
    scale, epochs, epoch_s, per_image = chosen
    cfg.data.image_size = scale
    # room for half as many again: a probe taken on a busy machine underestimates a quieter run, which then
    # goes on until the budget (the trainer stops when another epoch would not fit, the rate near its end)
    t.epochs = max(1, min(math.ceil(epochs * SPARE_EPOCHS), MAX_EPOCHS))
    why = _plan_words(
        p,
        shape,
        scale=scale,
        ladder=ladder,
        side=side,
        epochs=epochs,
        per_image=per_image,
        cfg=cfg,
        rare=rare,
        no_gpu=no_gpu,
        encoder_why=encoder_why,
    )
    return Plan(cfg, why, epoch_s, epochs)


def _plan_words(
    p: Preset,
    shape: DataShape,
    *,
    scale: int,
    ladder: list[int],
    side: int,
    epochs: int,
    per_image: float,
    cfg: RunConfig,
    rare: bool,
    no_gpu: bool,
    encoder_why: str,
) -> str:
    """A plan in words: the scale and why, the epochs that fit at the measured pace, the loss, the device."""
    natural, which = side, ("long" if p.instant else "short")
    if scale < min(natural, p.max_scale):
        bigger = ladder[max(0, ladder.index(scale) - 1)]
        reason = f"{bigger} px would allow fewer than {p.min_epochs} epochs"
    elif natural <= p.max_scale:
        reason = "the images' own size"
    else:
        reason = f"this preset's largest scale (the images are {natural} px on the {which} side)"
    images, n_epochs = f"{shape.n_train} image{'s' if shape.n_train != 1 else ''}", cfg.train.epochs
    if epochs > MAX_EPOCHS:  # say what the run will do, not the epochs the budget could hold
        fit = (
            f"up to {n_epochs} epochs of {images} at about {1 / per_image:.0f} img/s measured here (more would fit "
            f"in {_minutes(p.seconds)}, but {MAX_EPOCHS} are enough: it may end sooner)"
        )
    else:
        fit = (
            f"about {epochs} epochs of {images} at about {1 / per_image:.0f} img/s measured here (up to "
            f"{n_epochs} epochs if they fit)"
        )
    why = (
        f"{p.label}: {scale} px on the {which} side ({reason}), {fit}, width {cfg.model.width}; the learning rate "
        f"ends at {_minutes(p.seconds)}, when the run stops with the checkpoint it keeps."
        + (
            f" The rarest class covers {shape.rarest:.1%} of the pixels, so classes are weighed by how rare they"
            " are (weighted CE)."
            if rare
            else ""
        )
        + (" No GPU here: planned for this CPU." if no_gpu else "")
        + f" {encoder_why}."
    )
    return why


def choose_encoder(d: DataConfig) -> tuple[str, str]:
    """(encoder, why) for this data: the ImageNet EfficientNet-Lite0 encoder for real photos (a folder, a zip,
    a labelled set, Oxford-IIIT Pet), the tutorial U-Net for the built-in shapes, which it learns well from
    scratch (measured: bench/README.md, "Which encoder")."""
    from segdemo.core import pretrained

    if d.source == "builtin":
        return "unet", "Tutorial U-Net: the built-in shapes need no ImageNet features, and it trains fastest"
    if not pretrained.available():
        return "unet", (
            f"Tutorial U-Net: the ImageNet encoder would do better on photos, but {pretrained.WHEEL} or timm "
            "is not installed"
        )
    return LITE, TRANSFER


def _scales(top: int, bottom: int) -> list[int]:
    """Multiples of 32 from top down to bottom (top and bottom themselves too when they are not)."""
    top, bottom = max(32, top), max(32, min(bottom, top))
    out = [top] if top % 32 else []
    out += [s for s in range(top - top % 32, bottom - 1, -32) if s > 0]
    return out if out and out[-1] == bottom else [*out, bottom]


def _minutes(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{math.ceil(s / 60)} minutes"


def builtin_shape(d: DataConfig) -> DataShape:
    """The built-in shapes without drawing them: 128 px squares."""
    from segdemo.data.builtin import IMAGE_SIZE

    return DataShape(d.builtin_train, d.builtin_val, IMAGE_SIZE, IMAGE_SIZE)
