"""Train tab: choose and check data, pick settings, start/stop a run and watch it learn, epoch by epoch."""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from segdemo.core import speedups
from segdemo.core.config import LITE, RunConfig, quick_cpu_preset, use_encoder
from segdemo.core.encoders import ENCODERS as ENCODER_REGISTRY
from segdemo.core.losses import LOSSES as LOSS_REGISTRY
from segdemo.core.metrics import confusion_to_dict
from segdemo.core.viz import colorize, confusion_html, error_map, legend_html, overlay
from segdemo.core.weights_file import check_weights_file
from segdemo.data.base import IGNORE, ClassSet
from segdemo.data.sources import SOURCES, page_source
from segdemo.errors import ConfigError, JobError
from segdemo.events import Done, EpochEnd, Failed, Progress, Started, kept_epoch, stands_on
from segdemo.server.jobs import DONE, FAILED, QUEUED, RUNNING, STOPPED, Job
from segdemo.server.limits import LimitError
from segdemo.training import recipes
from segdemo.ui.context import AppContext, client_of
from segdemo.ui.errors import user_error, user_errors
from segdemo.ui.listeners import HEAVY
from segdemo.ui.models import export_onnx_zip, model_choices
from segdemo.ui.pictures import strip, upscale
from segdemo.ui.words import esc, fmt_duration, fmt_num, md, public, sentence, tidy_paths

log = logging.getLogger(__name__)
PRESET_CHOICES = [(p.label, p.key) for p in recipes.PRESETS]
QUICK = recipes.DEFAULT  # the preset a page opens with
DATASETS = SOURCES.choices("train")  # (label, id): the page's data choices, from the registry
LOSSES = LOSS_REGISTRY.choices("train")
UPSAMPLING = [
    ("Transposed convolution (learned)", "transposed"),
    ("Bilinear + convolution (smooth)", "bilinear"),
]
SCHEDULES = [
    ("Warm-up, then cosine decay (default)", "warmup_cosine"),
    ("Halve when val mIoU stops improving (plateau)", "plateau"),
    ("Constant", "constant"),
]
ENCODERS = ENCODER_REGISTRY.choices("train")
BLOCKS = [("Plain (two convolutions)", "plain"), ("Residual (plus a shortcut)", "residual")]
TABLE_COLUMNS = ["class", "IoU, latest epoch", "IoU at the kept epoch"]
CURVE_COLUMNS = ["epoch", "value", "curve"]
CURVE_COLORS = {"train loss": "#1f77b4", "val loss": "#ff7f0e", "val mIoU": "#2ca02c"}  # matplotlib's, as curves.png
STREAM_IDLE_S = 600  # a live view ends when its run has sent nothing new for this long (reload to reattach)
SAMPLE_MAX_SIDE = 320  # data-check sample pictures: enough to see, small enough to cache

WHY_LOSS = """
**Which loss?** Cross-entropy scores each pixel on its own. When the background covers 90% of the
pixels, a net that paints everything background already has a low CE loss, so small classes can be
ignored. *Weighted CE* multiplies the rare classes' pixels by a bigger weight. *Dice* measures the
overlap of predicted and true area **per class** and averages the classes, so a class covering 2% of
the image counts as much as the background; alone it can be jumpy at the start. *CE + Dice* adds the
two: CE's steady gradients plus Dice's balance. Try CE vs Dice on data with a tiny class and compare
the per-class IoU table.
"""
WHY_UPSAMPLING = """
**Which up-sampling?** The decoder doubles the resolution at every level. A *transposed convolution*
learns how to up-sample (it has weights, and early in training it can leave a faint checkerboard).
*Bilinear* up-sampling just interpolates (no weights), then a convolution refines it: smoother masks,
slightly fewer parameters, but its backward pass is slower on a CPU (about 1.5x here).
"""
WHY_OTHER = """
**Image size** is the training scale: every image is resized so that its short side is this many
pixels (its shape kept), and training sees random square crops of that; validation and Predict see the
whole image at that scale, and masks come back at the photo's own size. Bigger shows finer detail but
costs about size² time. **Width**: channels of the first level, doubled at each level down (the net's
capacity). **Depth**: how many times the image is halved; deeper sees more context. **Augmentation**:
random flips, small rotations, scale changes and brightness changes of the training images so the net
cannot just memorise them. **Learning rate**: the size of each step; too high and the loss explodes.
**Time budget**: a preset plans for it; the run stops there with its best checkpoint and the learning
rate has decayed to its end by then. **Schedule**: *warm-up + cosine* starts gently, peaks, then glides
down; *plateau* halves the rate when val mIoU has not improved for 3 epochs; *constant* never changes it.
**Encoder**: the tutorial U-Net learns everything from scratch; *EfficientNet-Lite0* (the presets' choice
for photos) and the *ResNets* are encoders that, with ImageNet weights, already know edges, textures and
object parts. **Transfer learning** is starting from a net trained on another task (here, naming the objects
in 1.3 million ImageNet photos) instead of from random weights: its first layers' features suit almost any
photo, so only the decoder and some fine-tuning are left to learn, which takes far fewer of your images and
minutes. The encoder then learns at a tenth of the decoder's rate, so a few photos cannot wash out what it
knew. *Instant* (a preset) freezes it altogether and trains only the decoder. **Residual
blocks** add a shortcut around each pair of convolutions, which helps deeper or longer training.
"""


# -- the Train settings, named once ------------------------------------------------------------------

TRAIN_IMAGES_LABEL = "Training images"


@dataclass(frozen=True)
class Setting:
    """One Train setting: its name (the /train API parameter), its widget, and its place in the config."""

    name: str
    widget: Callable[[Any], gr.Component]  # the preset's value -> the component showing it
    get: Callable[[RunConfig], Any]  # a preset's value
    put: Callable[[RunConfig, Any], None]  # the page's value into a config; ValueError/TypeError for a non-number


def _choice(options: list[tuple[str, str]], what: str) -> Callable[[Any], str]:
    values = [v for _, v in options]

    def check(v):
        if v not in values:
            raise ConfigError(f"Choose {what} from the list: {', '.join(values)}.")
        return v

    return check


def _loss(cfg: RunConfig, v) -> None:
    cfg.train.loss = _choice(LOSSES, "a loss")(v) if v not in (None, "") else cfg.train.loss  # empty: the preset's


def _time_budget(cfg: RunConfig, v) -> None:
    minutes = float(v) if v not in (None, "") else 0.0
    if minutes < 0:
        raise ConfigError("The time budget cannot be negative; 0 means no limit.")
    cfg.train.time_limit_s = minutes * 60 or None
    cfg.train.lr_follows_time = bool(minutes)  # a budget: the rate ends there


def _weights(cfg: RunConfig, v) -> None:
    path = v.get("path") if isinstance(v, dict) else v  # a FileData dict from the API, or a path
    if path in (None, ""):
        return
    if not str(path).lower().endswith((".pth", ".pt", ".safetensors")):
        raise ConfigError("Encoder weights must be a .pth, .pt or .safetensors file (a torchvision state dict).")
    check_weights_file(path)  # again here, whichever door the path came through: sizes before torch reads it
    cfg.model.weights = str(path)


def _train_images(cfg: RunConfig, v) -> None:
    n = int(v)
    if n < 2:
        raise ConfigError("Train on at least 2 images.")
    cfg.data.max_train_images = n  # a cap; build_config turns it into the built-in data's size for "builtin"


# In the /train API's order, which is also the page's. A table, laid out by hand: one setting per entry.
# fmt: off
SETTINGS = (
    Setting("image_size", lambda v: gr.Slider(32, 512, v, step=32, label="Image size (px)", elem_id="image-size"),
            lambda c: c.data.image_size, lambda c, v: setattr(c.data, "image_size", int(v))),
    Setting("epochs", lambda v: gr.Slider(1, 100, v, step=1, label="Epochs", elem_id="epochs"),
            lambda c: c.train.epochs, lambda c, v: setattr(c.train, "epochs", int(v))),
    Setting("batch_size", lambda v: gr.Slider(1, 64, v, step=1, label="Batch size", elem_id="batch-size"),
            lambda c: c.train.batch_size, lambda c, v: setattr(c.train, "batch_size", int(v))),
    Setting("learning_rate", lambda v: gr.Number(v, label="Learning rate", minimum=1e-5, maximum=0.5, step=1e-4),
            lambda c: c.train.lr, lambda c, v: setattr(c.train, "lr", float(v))),
    Setting("loss", lambda v: gr.Dropdown(LOSSES, value=v, label="Loss", info="On imbalanced classes, Dice (or "
                                          "CE + Dice) keeps small classes from being ignored; see Why? below."),
            lambda c: c.train.loss, _loss),
    Setting("width", lambda v: gr.Slider(4, 64, v, step=4, label="Width (channels of the first level)",
                                         elem_id="width"),
            lambda c: c.model.width, lambda c, v: setattr(c.model, "width", int(v))),
    Setting("depth", lambda v: gr.Slider(2, 5, v, step=1, label="Depth (down-sampling steps)"),
            lambda c: c.model.depth, lambda c, v: setattr(c.model, "depth", int(v))),
    Setting("upsampling", lambda v: gr.Radio(UPSAMPLING, value=v, label="Up-sampling in the decoder",
                                             info="Learned (transposed) or fixed (bilinear); see Why? below."),
            lambda c: c.model.upsampling,
            lambda c, v: setattr(c.model, "upsampling", "bilinear" if v == "bilinear" else "transposed")),
    Setting("augment", lambda v: gr.Checkbox(v, label="Augmentation (flips, small turns, brightness)"),
            lambda c: c.data.augment, lambda c, v: setattr(c.data, "augment", bool(v))),
    Setting("train_images", lambda v: gr.Slider(16, 2000, v, step=16, label=TRAIN_IMAGES_LABEL, elem_id="train-images",
                                                info="Fewer = faster; for your own data it is a cap."),
            lambda c: c.data.builtin_train, _train_images),
    Setting("time_budget", lambda v: gr.Slider(0, 60, v, step=0.25, label="Time budget (minutes)",
                                               elem_id="time-budget", info="The run stops here with its best "
                                               "checkpoint, and the learning rate reaches its end here. 0: no limit."),
            lambda c: round((c.train.time_limit_s or 0) / 60, 2), _time_budget),
    Setting("schedule", lambda v: gr.Dropdown(SCHEDULES, value=v, label="Learning-rate schedule"),
            lambda c: c.train.schedule, lambda c, v: setattr(c.train, "schedule", _choice(SCHEDULES, "a schedule")(v))),
    Setting("encoder", lambda v: gr.Dropdown(ENCODERS, value=v, label="Encoder", elem_id="encoder"),
            lambda c: c.model.encoder, lambda c, v: use_encoder(c, _choice(ENCODERS, "an encoder")(v))),
    Setting("block", lambda v: gr.Radio(BLOCKS, value=v, label="Conv block"),
            lambda c: c.model.block, lambda c, v: setattr(c.model, "block", _choice(BLOCKS, "a block")(v))),
    Setting("pretrained", lambda v: gr.Checkbox(v, label="ImageNet weights for the encoder (EfficientNet-Lite0: "
                                                "installed with segdemo; ResNet: downloaded, or upload them below)"),
            lambda c: c.model.pretrained, lambda c, v: setattr(c.model, "pretrained", bool(v))),
    Setting("encoder_weights", lambda v: gr.File(v, label="ResNet encoder weights, offline (.pth/.safetensors: "
                                                 "torchvision's ImageNet state dict)", file_types=[".pth", ".pt",
                                                 ".safetensors"], elem_id="encoder-weights", height=90),
            lambda c: None, _weights),
)
ROWS = (("image_size", "epochs"), ("batch_size", "learning_rate"), ("time_budget", "schedule"), ("loss",),
        ("width", "depth"), ("upsampling",), ("augment", "train_images"), ("encoder", "block"),
        ("pretrained", "encoder_weights"))
# fmt: on


def run_line(cfg: RunConfig) -> str:
    """The settings a run started with, in one Markdown line (numbers and fixed labels only)."""
    loss = dict((v, k.split(":")[0]) for k, v in LOSSES).get(cfg.train.loss, cfg.train.loss)
    n = cfg.train.epochs
    budget = f"time budget {cfg.train.time_limit_s / 60:g} min" if cfg.train.time_limit_s else "no time limit"
    return (
        f"\n\n**This run's settings**: up to {n} epoch{'s' if n != 1 else ''} · {budget} · {cfg.data.image_size} px · "
        f"batch {cfg.train.batch_size} · width {cfg.model.width}, depth {cfg.model.depth} · "
        f"learning rate {cfg.train.lr:g} · {loss} · augmentation {'on' if cfg.data.augment else 'off'}"
    )


PAGE_OPENED = "page opened, no plan yet"
PLANS_KEPT = 64  # the planned State of a page whose first plan has not landed
RUN_SHOWN = tuple(s.name for s in SETTINGS if s.name not in ("train_images", "encoder_weights"))


def _same(page, opening) -> bool:
    """A page value still equal to the page's opening one (numbers compared as numbers: 8 == 8.0)."""
    if isinstance(opening, bool) or not isinstance(opening, int | float):
        return page == opening
    try:
        return float(page) == float(opening)
    except (TypeError, ValueError):
        return False


def planned_for(preset, dataset, zip_file) -> str:
    """The page's plan is for this preset and data (the planned State): Train pressed with another preset or
    other data than the page's plan was made for plans itself. (A moved images slider is the student's own.)"""
    return f"{preset_key(preset)}|{dataset}|{zip_file or ''}"


def plan_key(preset, dataset, zip_file, train_images) -> str:
    """What a plan was made for: the preset, the data and how many training images."""
    try:
        n = int(float(train_images or 0))
    except (TypeError, ValueError):
        n = 0
    return f"{preset_key(preset)}|{dataset}|{zip_file or ''}|{n}"


def preset_values(cfg: RunConfig | None = None) -> dict[str, Any]:
    """The settings' values in a config (a preset's plan; by default the fixed defaults), by name."""
    c = cfg or quick_cpu_preset()
    return {s.name: s.get(c) for s in SETTINGS}


def preset_key(preset) -> str:
    """A preset's key from the page or the API (Gradio has checked it is one of the choices)."""
    return preset if isinstance(preset, str) and preset in recipes.BY_KEY else QUICK


def build_config(preset: str, dataset: str, **values) -> RunConfig:
    """The run config from the preset plus the settings on the page (by name); gr.Error says what to change.

    The page holds the preset's plan (apply_preset), so the settings carry it; the preset itself adds only
    where it trains (the GPU preset on CUDA, when there is one)."""
    cfg = quick_cpu_preset()
    p = recipes.BY_KEY[preset_key(preset)]
    import torch

    cfg.train.device = "cuda" if p.gpu and torch.cuda.is_available() else cfg.train.device
    try:
        for s in SETTINGS:
            s.put(cfg, values.get(s.name))
    except ConfigError as e:
        raise user_error(str(e)) from None
    except (TypeError, ValueError, OverflowError):
        raise gr.Error("Every setting needs a number; fill in the empty ones.") from None
    if p.instant and cfg.model.encoder == LITE and cfg.model.pretrained:  # instant: the encoder stays frozen
        cfg.train.freeze_encoder, cfg.data.augment, cfg.data.resize = True, False, "long"  # as recipes.plan
    n, cfg.data.max_train_images = cfg.data.max_train_images, None
    try:
        source = page_source(dataset)
    except ConfigError:
        raise gr.Error("Choose a dataset first.") from None
    if "train" not in source.pages:
        raise gr.Error("Choose a dataset first.")
    source.for_page(cfg.data, n)  # a zip's uploaded file is filled in by the caller
    try:
        cfg.validate()
    except ConfigError as e:
        raise user_error(str(e)) from None
    return cfg


# -- the live view of one run ---------------------------------------------------------------------------


@dataclass
class RunView:
    """What the page shows of a run, folded from its events."""

    started: Started | None = None
    progress: Progress | None = None
    epochs: list[EpochEnd] = field(default_factory=list)
    previews_from: EpochEnd | None = None
    diagnosis_from: EpochEnd | None = None  # the newest epoch with a confusion matrix and worst images
    end: Done | Failed | None = None

    def add(self, ev) -> bool:
        """Fold one event in; True when the plot, table or filmstrip changed."""
        if isinstance(ev, Started):
            self.started = ev
            return True
        if isinstance(ev, Progress):
            self.progress = ev
            return False
        if isinstance(ev, EpochEnd):
            self.epochs.append(ev)
            if ev.previews:
                self.previews_from = ev
            if ev.confusion is not None:
                self.diagnosis_from = ev
            return True
        if isinstance(ev, Done | Failed):
            self.end = ev
            return True
        return False

    @property
    def classes(self) -> ClassSet | None:
        s = self.started
        return ClassSet(tuple(s.class_names), tuple(tuple(c) for c in s.class_colors)) if s else None

    def best(self) -> EpochEnd | None:
        """The epoch whose checkpoint the run keeps (by the run's own rule, Started.selection)."""
        return kept_epoch(self.epochs)

    def rate(self) -> float:
        """Training images per second: this epoch's, once a tenth of it is done; until then the last epoch's
        (the first batches of an epoch include start-up costs and would make the ETA jump)."""
        p = self.progress
        if p is None:
            return 0.0
        if self.epochs and p.batch < max(3, p.n_batches // 10):
            return self.epochs[-1].images_per_s
        return p.images_per_s

    def eta_s(self, job: Job) -> float | None:
        p = self.progress
        if p is None or self.started is None or self.rate() <= 0:
            return None
        n_epochs = self.started.epochs
        bs = min(job.config.train.batch_size, max(1, self.started.n_train))
        remaining = ((p.n_batches - p.batch) + (n_epochs - p.epoch) * p.n_batches) * bs
        overhead = 1.15  # validation and checkpoints, until an epoch tells us better
        if self.epochs:
            last = self.epochs[-1]
            train_s = p.n_batches * bs / max(last.images_per_s, 1e-9)
            overhead = max(1.0, last.seconds / max(train_s, 1e-9))
        return remaining / self.rate() * overhead

    def status(self, job: Job, position: int, running: int, wait_s: float | None = None) -> str:
        if job.status == QUEUED:
            wait = f", about **{fmt_duration(wait_s)}** from now" if wait_s else ""
            again = (
                f" It goes on from epoch {job.paused.epochs_done} where it paused." if job.paused is not None else ""
            )
            return (
                f"**Waiting for a free training slot: you are number {position} in line**{wait} "
                f"({running} run{'s' if running != 1 else ''} training now; the wait is estimated from the time "
                f"budgets of the runs ahead). Your run starts by itself; Stop takes it out of the line.{again}"
            )
        best = self.best()
        best_txt = f"kept so far: epoch {best.epoch}, val mIoU {best.miou:.3f}" if best else ""
        if job.status == RUNNING or self.end is None:
            s = self.started
            if s is None:
                return "Preparing the data and measuring the fastest settings on this machine…"
            p = self.progress
            if p is not None and (not self.epochs or p.epoch > self.epochs[-1].epoch):
                parts = [
                    f"**Epoch {p.epoch}/{s.epochs}**",
                    f"batch {p.batch}/{p.n_batches}",
                    f"{self.rate():.0f} images/s",
                ]
            elif self.epochs:
                e = self.epochs[-1]
                parts = [f"**Epoch {e.epoch}/{s.epochs} done**", f"{e.images_per_s:.0f} images/s"]
            else:
                parts = [f"**Epoch 1/{s.epochs}** starting"]
            eta = self.eta_s(job)
            limit = job.config.train.time_limit_s
            if eta is not None and limit and self.epochs:  # a time budget ends the run first: say so
                eta = min(eta, max(0.0, limit - sum(e.seconds for e in self.epochs)))
            if eta is not None:
                parts.append(f"about {fmt_duration(eta)} left")
            if best_txt:
                parts.append(best_txt)
            return (
                " · ".join(parts) + f"\n\nTraining on **{s.device}**, {s.precision} · {s.n_train} training / "
                f"{s.n_val} validation images · {s.parameters / 1e6:.2f} M parameters"
                + run_line(job.config)
                + self.notes()
            )
        end = self.end
        if isinstance(end, Failed) or job.status == FAILED:
            msg = end.message if isinstance(end, Failed) else job.message
            msg = tidy_paths(
                msg,
                (job.run_dir / "upload", ""),
                (job.run_dir / "data", "the dataset"),
                (job.run_dir, "the run folder"),
            )
            return f"✗ **Training failed:** {md(public(msg))}"
        took = f" in {fmt_duration(end.seconds)}" if end.seconds else ""
        if end.best_miou is not None:
            kept = next((e for e in self.epochs if e.epoch == end.best_epoch), None)
            on = f" on {stands_on(kept)}" if kept is not None and stands_on(kept) else ""
            probe = kept.train_miou if kept is not None else None
            also = f" (training-photo mIoU {probe:.3f})" if probe is not None else ""
            tail = (
                f"kept epoch {end.best_epoch}: val mIoU **{end.best_miou:.3f}**{on}{also}. Its checkpoint is "
                "below, and it is selected in the **Predict** tab: try it on new images." + self.notes()
            )
        else:
            tail = "no epoch finished, so no checkpoint was saved. Press Train to start again."
        if job.status == STOPPED:
            n = end.epochs_done
            return f"■ **Stopped** after {n} epoch{'s' if n != 1 else ''}{took}; {tail}" + run_line(job.config)
        if end.reason == "time_limit":
            planned = self.started.epochs if self.started else end.epochs_done
            budget = fmt_duration(job.config.train.time_limit_s or end.seconds)
            return (
                f"✓ **Used its time budget** ({budget}): {end.epochs_done} of up to {planned} epochs{took}, the "
                f"learning rate ending with the budget; {tail}" + run_line(job.config)
            )
        return f"✓ **Finished**: {end.epochs_done} epochs{took}; {tail}" + run_line(job.config)

    def notes(self) -> str:
        """The data's warnings and the run's checkpoint rule, as Markdown lines under the status."""
        s = self.started
        if s is None:
            return ""
        lines = [f"⚠ {md(n)}" for n in s.warnings]
        if s.selection:
            lines.append(f"ℹ {md(s.selection[0].upper() + s.selection[1:])}.")
        return "".join(f"\n\n{line}" for line in lines)

    def figure(self):
        """The curves as data for the page's gr.LinePlot, which draws them in the browser: epoch, value, curve.
        The epoch axis spans the whole run from the start (at least 5 wide, or Vega's ticks go fractional).

        None until the first epoch: Gradio 6.31 builds the chart (column types, colours, legend) when a plot gets
        data after having none, and afterwards only swaps the data, so it must first see real columns."""
        if not self.epochs:
            return None
        rows = [
            {"epoch": e.epoch, "value": float(v), "curve": name}
            for e in self.epochs
            for name, v in (("train loss", e.train_loss), ("val loss", e.val_loss), ("val mIoU", e.miou))
        ]
        planned = self.started.epochs if self.started else 1
        caption = None
        if len(self.epochs) == 1:  # one point per curve draws no line: say the numbers instead of an empty chart
            e = self.epochs[0]
            caption = (
                f"Epoch {e.epoch}: train loss {e.train_loss:.3f} · val loss {e.val_loss:.3f} · val mIoU "
                f"{e.miou:.3f}. The lines appear from the next epoch on."
            )
        return gr.update(value=pd.DataFrame(rows, columns=CURVE_COLUMNS), x_lim=[1, max(5, planned)], caption=caption)

    def table(self) -> pd.DataFrame:
        if not self.epochs or self.started is None:
            return pd.DataFrame(columns=TABLE_COLUMNS)
        last, best = self.epochs[-1], self.best()
        cols = ["class", f"IoU, epoch {last.epoch} (latest)", f"IoU, epoch {best.epoch} (kept)"]
        rows = [
            [name, fmt_num(a, 3), fmt_num(b, 3)]
            for name, a, b in zip(self.started.class_names, last.per_class_iou, best.per_class_iou, strict=False)
        ]
        rows.append(
            [
                "mean (mIoU)",
                fmt_num(last.miou, 3),
                fmt_num(best.miou, 3),
            ]
        )
        return pd.DataFrame(rows, columns=cols)

    def filmstrip(self) -> list:
        ev, classes = self.previews_from, self.classes
        if ev is None or classes is None:
            return []
        out = []
        for p in ev.previews:
            valid = p.target != IGNORE
            acc = float((p.pred[valid] == p.target[valid]).mean()) if valid.any() else float("nan")
            out.append((upscale(p.image), p.name))
            out.append((upscale(colorize(p.target, classes)), "truth"))
            out.append((upscale(colorize(p.pred, classes)), f"pred {acc:.0%}"))
        return out

    def confusion(self) -> str:
        ev, classes = self.diagnosis_from, self.classes
        if ev is None or classes is None:
            return ""
        return confusion_html(ev.confusion, classes, f"the validation images after epoch {ev.epoch}")

    def worst(self) -> list:
        """The epoch's lowest-scoring validation images, each beside its error map."""
        ev = self.diagnosis_from
        if ev is None:
            return []
        return [
            (strip(upscale(p.image), upscale(error_map(p.pred, p.target))), f"{p.name}: mIoU {p.miou:.2f}")
            for p in ev.worst
        ]


class TrainTab:
    """Builds the tab's widgets (inside an open gr.Tab) and wires its events."""

    def __init__(self, ctx: AppContext, token: gr.BrowserState):
        self.ctx, self.token = ctx, token
        self._plan_lock, self._plans = threading.Lock(), {}  # plan_key -> (settings, why): see _plan
        gr.Markdown(
            "Pick the data, check it, choose settings and press **Train**. The curves, the per-class "
            "table and the validation filmstrip update after every epoch. Your run keeps going if "
            "you close the page; open it again to see it."
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=340):
                gr.Markdown("### 1. Data")
                with gr.Group():
                    self.dataset = gr.Radio(DATASETS, value="builtin", label="Dataset", show_label=False)
                    self.zip_file = gr.File(
                        label="Dataset .zip (images/ and masks/, paired by file name)",
                        file_types=[".zip"],
                        visible=False,
                        elem_id="dataset-zip",
                    )
                self.data_report = gr.Markdown(elem_id="data-report", label="data report")
                self.classes_html = gr.HTML(label="classes")
                self.samples = gr.Gallery(
                    label="A few training pairs: image and its mask overlaid",
                    columns=3,
                    height=300,
                    format="png",
                    object_fit="contain",
                    allow_preview=True,
                )
                gr.Markdown("### 2. Settings")
                self.preset = gr.Dropdown(
                    PRESET_CHOICES,
                    value=QUICK,
                    label="Preset: a time budget",
                    info="Plans everything below for the chosen data and this server's measured speed; "
                    "change any of it afterwards.",
                    elem_id="preset",
                )
                self.preset_why = gr.Markdown("", elem_id="preset-why")
                # what the settings on the page were planned for (plan_key); None where no page asked for a plan
                # (an API caller's settings are its own). Train compares it with the data and preset it is sent
                # and plans itself when the page's plan has not landed yet ("processing")
                self.planned = gr.State(None)
                v = preset_values()
                widgets = {}
                for row in ROWS:
                    with gr.Row():
                        for s in SETTINGS:
                            if s.name in row:
                                widgets[s.name] = s.widget(v[s.name])
                # by name, in SETTINGS order whatever the layout: /train's positional parameters follow it
                self.settings: dict[str, gr.Component] = {s.name: widgets[s.name] for s in SETTINGS}
                with gr.Accordion("Why? Loss, up-sampling and the other settings", open=False):
                    gr.Markdown(WHY_LOSS + WHY_UPSAMPLING + WHY_OTHER)
            with gr.Column(scale=3, min_width=420):
                gr.Markdown("### 3. Train and watch")
                with gr.Row():
                    # enabled once the page has its session (ui/__init__.py: ready)
                    self.train_btn = gr.Button("Train", variant="primary", elem_id="train-btn", interactive=False)
                    self.stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn")
                self.run_id = gr.Textbox(visible=False, label="run id")
                self.status = gr.Markdown(
                    "Choose data and settings, then press **Train**.", elem_id="run-status", label="status"
                )
                self.curves = gr.LinePlot(
                    x="epoch",
                    y="value",
                    color="curve",
                    color_map=CURVE_COLORS,
                    x_title="epoch",
                    y_title="loss · mIoU",
                    x_axis_format="d",
                    x_lim=[1, 5],
                    y_lim=[0, None],
                    height=280,
                    # a title inside the chart, not a label above it: Gradio 6.31 cuts the legend off by the
                    # label's height
                    title="Loss and validation mIoU per epoch",
                    label="Loss and validation mIoU per epoch",
                    show_label=False,
                    elem_id="curves",
                )
                with gr.Row(equal_height=False):
                    self.table = gr.Dataframe(
                        value=pd.DataFrame(columns=TABLE_COLUMNS),
                        label="Per-class IoU on the validation images",
                        interactive=False,
                        wrap=True,
                        elem_id="iou-table",
                        min_width=260,
                    )
                    self.confusion = gr.HTML(label="confusion matrix", elem_id="confusion", min_width=260)
                gr.Markdown(
                    "**Validation filmstrip**: the same validation images every epoch, each as *image · "
                    "true mask · prediction* (with the share of its pixels the prediction gets right)."
                )
                self.filmstrip = gr.Gallery(
                    label="Validation filmstrip",
                    show_label=False,
                    columns=6,
                    height=440,
                    format="png",
                    object_fit="contain",
                    elem_id="filmstrip",
                )
                gr.Markdown(
                    "**Where it fails**: this epoch's validation images with the lowest mIoU of their own, each "
                    "beside its error map (green right · red wrong class · yellow missed, predicted background "
                    "· grey ignored)."
                )
                self.worst = gr.Gallery(
                    label="Worst validation images",
                    show_label=False,
                    columns=2,
                    height=440,
                    format="png",
                    object_fit="contain",
                    elem_id="worst-images",
                )
                self.checkpoint = gr.File(
                    label="Best checkpoint of this run (.safetensors)",
                    interactive=False,
                    elem_id="best-checkpoint",
                )
                self.export_btn = gr.Button(
                    "Download the best checkpoint as ONNX", size="sm", elem_id="run-export-onnx"
                )
                self.export_file = gr.File(
                    label="Take-home bundle: ONNX model, predict_onnx.py, README.md, requirements.txt",
                    interactive=False,
                    visible=False,
                    elem_id="run-export-file",
                )
                self.gif_btn = gr.Button("Download the filmstrip as an animated GIF", size="sm", elem_id="run-gif")
                self.gif_file = gr.File(
                    label="The filmstrip, one frame per epoch (for slides)",
                    interactive=False,
                    visible=False,
                    elem_id="run-gif-file",
                )
        self.watch_outputs = [
            self.status,
            self.curves,
            self.table,
            self.filmstrip,
            self.checkpoint,
            self.confusion,
            self.worst,
        ]

    # -- wiring -----------------------------------------------------------------------------------------

    def wire(self, demo: gr.Blocks, predict_model: gr.Dropdown) -> None:
        outs = [*self.watch_outputs, predict_model]
        self.dataset.change(
            lambda d: gr.update(visible=d == "zip"),
            self.dataset,
            self.zip_file,
            api_visibility="private",
            queue=False,
        )
        # the page's first check and every data change share one always_last listener, so a check of the data
        # the page opened with cannot land after the check of data the student chose a moment later
        checked = gr.on(
            [demo.load, self.dataset.change, self.zip_file.change, self.settings["train_images"].change],
            self.check_data,
            [self.dataset, self.zip_file, self.settings["train_images"]],
            [self.data_report, self.classes_html, self.samples],
            api_name="check_data",
            trigger_mode="always_last",
            concurrency_id=HEAVY,
        )
        plan_inputs = [self.preset, self.dataset, self.zip_file, self.settings["train_images"]]
        plan_outputs = [*self.settings.values(), self.preset_why, self.planned]
        # a page is open: from now on its settings are a plan's only once one has landed (the planned key)
        demo.load(lambda: PAGE_OPENED, None, self.planned, queue=False, api_visibility="private")
        self.preset.input(self.apply_preset, plan_inputs, plan_outputs, api_name="plan", concurrency_id=HEAVY)
        checked.then(self.apply_preset, plan_inputs, plan_outputs, api_visibility="private", concurrency_id=HEAVY)
        started = self.train_btn.click(
            self.start,
            [self.token, self.dataset, self.zip_file, self.preset, self.planned],
            [self.run_id, self.status],
            inputs_kwargs=self.settings,  # /train's parameters after preset, by name, in SETTINGS order
            api_name="train",
            concurrency_limit=4,
            concurrency_id="train",
        )
        # the page shows the settings the run started with (a plan Train made itself, when the page's was late)
        shown = [self.settings[n] for n in RUN_SHOWN]
        started.success(self.run_settings, [self.token, self.run_id], shown, api_visibility="private", queue=False)
        started.success(
            self.watch,
            [self.token, self.run_id],
            outs,
            api_name="watch",
            concurrency_limit=None,
            show_progress="hidden",
        )
        self.stop_btn.click(
            self.stop,
            [self.token, self.run_id],
            self.status,
            api_name="stop",
            concurrency_limit=None,
            show_progress="hidden",
        )
        self.export_btn.click(
            self.export_onnx,
            [self.token, self.run_id],
            self.export_file,
            api_visibility="private",
            concurrency_id=HEAVY,
        )
        self.settings["encoder_weights"].upload(
            self.check_weights,
            self.settings["encoder_weights"],
            self.settings["encoder_weights"],
            api_visibility="private",
            concurrency_id=HEAVY,
        )
        self.gif_btn.click(
            self.filmstrip_gif, [self.token, self.run_id], self.gif_file, api_name="filmstrip_gif", concurrency_id=HEAVY
        )
        gr.api(self.run_info, api_name="run_info", concurrency_limit=None)
        self.reattach_outputs = [self.run_id, *outs]

    # -- handlers -------------------------------------------------------------------------------------

    @staticmethod
    def ready():
        """The page has its session: Train may be pressed."""
        return gr.update(interactive=True)

    @user_errors
    def apply_preset(self, preset: str, dataset: str, zip_file: str | None, train_images, request: gr.Request = None):
        """Plan the preset for the chosen data on this server: every setting, and one line saying why. A plan
        that needs a new speed probe (seconds of every core) counts against the caller's address."""
        with speedups.probes_charged_to(lambda: self.ctx.probes.hit(client_of(request))):
            return self._apply_preset(preset, dataset, zip_file, train_images)

    def _apply_preset(self, preset: str, dataset: str, zip_file: str | None, train_images):
        values, why, n_train = self._plan(preset, dataset, zip_file, train_images)
        label = TRAIN_IMAGES_LABEL
        if dataset != "builtin" and n_train is not None:  # a cap for one's own data: say how many there are
            label = f"Training images, at most (this dataset has {n_train} to train on)"
        return {
            **{self.settings[name]: v for name, v in (values or {}).items()},
            self.preset_why: why,
            self.planned: planned_for(preset, dataset, zip_file),
            self.settings["train_images"]: gr.update(label=label),
        }  # numbers only: no user text

    def _plan(self, preset: str, dataset: str, zip_file: str | None, train_images) -> tuple[dict | None, str, Any]:
        """(the planned settings by name, or None when the data cannot be planned for yet; the line saying why;
        the number of training pairs the plan is for, or None).

        One plan per plan_key, made once (under a lock) and kept: the page's plan and the one Train makes when
        pressed before it landed are the same plan, not two timed probes on a machine one of them keeps busy."""
        key = plan_key(preset, dataset, zip_file, train_images)
        with self._plan_lock:
            hit = self._plans.get(key)
            if hit is None:
                hit = self._make_plan(preset, dataset, zip_file, train_images)
                if hit[0] is not None:
                    self._plans[key] = hit
                    while len(self._plans) > PLANS_KEPT:
                        self._plans.pop(next(iter(self._plans)))
        return (dict(hit[0]) if hit[0] is not None else None), hit[1], hit[2]

    def _make_plan(self, preset: str, dataset: str, zip_file: str | None, train_images) -> tuple[dict | None, str, Any]:
        p = recipes.BY_KEY[preset_key(preset)]
        cfg = build_config(QUICK, dataset, **{**preset_values(), "train_images": train_images or 768})
        if dataset == "builtin":
            shape = recipes.builtin_shape(cfg.data)
        elif dataset == "zip" and not zip_file:
            return None, "Upload your data and the preset will be planned for it.", None
        else:
            if dataset == "zip":
                cfg.data.source = zip_file
            _, _, _, shape = self._check(cfg)
            if shape is None:  # the data has problems: the report says which
                return None, "Fix the data (see the check above) and the preset will be planned for it.", None
        plan = recipes.plan(p, shape, base=cfg)
        values = preset_values(plan.config)
        values.pop("train_images")  # the data's choice, not the preset's
        values.pop("encoder_weights")
        return values, plan.why, shape.n_train

    @user_errors
    def run_settings(self, token: str, run_id: str):
        """The settings of the run just started, for the page's widgets (they may be a plan the page had not
        shown yet)."""
        job = self.ctx.jobs.get(self.ctx.owner(token), run_id)
        values = preset_values(job.config)
        return [values[n] for n in RUN_SHOWN]

    @user_errors
    def check_data(self, dataset: str, zip_file: str | None, train_images):
        """Check the chosen data: pairs, classes with colours and pixel shares, a few samples, problems."""
        if dataset == "zip" and not zip_file:
            return (
                "Upload a **.zip** of a folder with `images/` and `masks/` (an image and its mask share a "
                "file name, e.g. `images/cat1.jpg` + `masks/cat1.png`). An optional `classes.json` names the "
                "classes.",
                "",
                [],
            )
        cfg = build_config(QUICK, dataset, **{**preset_values(), "train_images": train_images or 768})
        if dataset == "zip":
            cfg.data.source = zip_file
        report, classes, samples, _ = self._check(cfg)
        return _report_markdown(report), _classes_html(report, classes), samples

    def _check(self, cfg: RunConfig):
        """(report, classes or None, sample pictures, DataShape or None) for a data config; cached per source."""
        from segdemo.data import open_dataset
        from segdemo.data.check import check_for_page

        src = cfg.data.source
        key: tuple = (src, cfg.data.builtin_train, cfg.data.builtin_val, cfg.data.seed)
        if src not in ("builtin",) and Path(src).is_file():
            st = Path(src).stat()
            key += (st.st_size, st.st_mtime_ns)
        hit = self.ctx.cache_get(key)
        if hit is not None:
            return hit
        work = self.ctx.scratch("checks")
        try:
            report, checked = check_for_page(cfg.data, work)
            classes, samples, shape = None, [], None
            if report.ok:
                splits = open_dataset(checked, work)
                classes, shape = splits.classes, recipes.DataShape.of(splits)
                for i in range(min(6, len(splits.train))):
                    image, mask = splits.train.load(i)
                    image, mask = _shrink_pair(image, mask)
                    pic = (
                        strip(image, overlay(image, mask, classes, 0.5))
                        if max(image.shape[:2]) <= 256
                        else overlay(image, mask, classes, 0.5)
                    )
                    samples.append((pic, splits.train.name(i)))
            label = Path(src).name if src.lower().endswith(".zip") else "the dataset"
            places = ((work / "data", label), (work, "the check folder"))
            report.problems = [tidy_paths(t, *places) for t in report.problems]
            report.warnings = [replace(w, text=tidy_paths(w.text, *places)) for w in report.warnings]
        finally:
            shutil.rmtree(work, ignore_errors=True)
        out = (report, classes, samples, shape)
        self.ctx.cache_put(key, out, sum(p.nbytes for p, _ in samples) + 4096)
        return out

    @user_errors
    def start(
        self,
        token: str,
        dataset: str,
        zip_file: str | None,
        preset: str,
        planned=None,  # the page's plan_key (gr.State: never an API parameter)
        request: gr.Request = None,
        encoder_weights=None,  # named, with its default, so the API may leave out the one file setting
        # the Train settings by name (SETTINGS), untyped: build_config answers any value with a sentence (a type
        # hint would make Gradio refuse a wrong type with a generic error instead)
        **settings,
    ):
        """Start a run for this browser; returns its run id (refused while one is queued or running)."""
        owner = self.ctx.owner(token)
        if planned is not None and planned != planned_for(preset, dataset, zip_file):
            # pressed while the page's plan was still being made: every setting still showing the page's opening
            # value takes the plan's, as the page will show; one the student changed by hand stays theirs
            with speedups.probes_charged_to(lambda: self.ctx.probes.hit(client_of(request))):
                values, _, _ = self._plan(preset, dataset, zip_file, settings.get("train_images"))
            opening = preset_values()
            for name, v in (values or {}).items():
                if _same(settings.get(name), opening.get(name)):
                    settings[name] = v
        cfg = build_config(preset, dataset, encoder_weights=encoder_weights, **settings)
        active = self.ctx.jobs.active_for(owner)
        if active is not None:
            raise gr.Error(
                "You already have a run in progress (Train was pressed twice?). Press Stop, or wait "
                "for it to finish, before starting another."
            )
        data_file = None
        if dataset == "zip":
            if not zip_file:
                raise gr.Error("Upload a .zip of your dataset first (a folder with images/ and masks/).")
            if not str(zip_file).lower().endswith(".zip"):
                raise gr.Error("The dataset must be a .zip file of a folder with images/ and masks/.")
            cfg.data.source = data_file = zip_file
        num_classes = 4 if dataset == "builtin" else None
        if dataset in ("zip", "oxford-pet"):
            report, _, _, _ = self._check(cfg)
            if not report.ok:
                raise user_error(
                    "This data cannot be used yet: " + public(report.problems[0]) + " Fix it and choose the data again."
                )
            num_classes = len(report.class_names) or None
        job = self.ctx.jobs.submit(owner, cfg, data_file=data_file, client=client_of(request), num_classes=num_classes)
        pos = self.ctx.jobs.queue_position(job)
        return job.id, ("Waiting in line…" if pos > 1 else "Starting…")

    @user_errors
    def stop(self, token: str, run_id: str | None):
        """Stop this browser's run: it ends after the current batch and keeps its best checkpoint."""
        owner = self.ctx.owner(token)
        jobs = self.ctx.jobs
        job = None
        if run_id:
            try:
                job = jobs.get(owner, run_id)
            except JobError:  # expired or not this browser's: stop its active run, if any
                job = None
        target = job.id if job is not None and job.is_active else None
        jobs.stop(owner, target)  # None: this browser's active run, or "Nothing is running to stop"
        return "Stopping after the current batch…"

    @user_errors
    async def watch(self, token: str, run_id: str, request: gr.Request = None):
        """Stream a run's progress (status, curves, per-class IoU, filmstrip, checkpoint, confusion matrix, worst
        images) until it ends."""
        owner = self.ctx.owner(token)
        job = self.ctx.jobs.get(owner, run_id) if run_id else self.ctx.jobs.latest_for(owner)
        if job is None:
            raise gr.Error("There is no run to watch yet; press Train.")
        with self.ctx.streams.hold(job.owner_key, client_of(request)):
            async for out in self._stream(owner, job):
                yield out

    async def reattach(self, token: str, request: gr.Request = None):
        """On page load: show this browser's running or latest run (and keep streaming it while it runs)."""
        if not self.ctx.jobs.valid_owner_token(token):
            yield [gr.skip()] * len(self.reattach_outputs)
            return
        owner = token
        job = self.ctx.jobs.active_for(owner) or self.ctx.jobs.latest_for(owner)
        choices = gr.update(choices=model_choices(self.ctx, owner))
        if job is None:
            yield [gr.skip(), *[gr.skip()] * len(self.watch_outputs), choices]
            return
        try:
            held = self.ctx.streams.hold(job.owner_key, client_of(request))
        except LimitError:  # too many live views: show the run once, without streaming
            async for out in self._stream(owner, job, once=True):
                yield [job.id, *out]
            return
        try:
            with held:
                async for out in self._stream(owner, job):
                    yield [job.id, *out]
        except Exception:  # a page load must never show an error box
            log.exception("reattaching to a run failed")
            return

    async def _stream(self, owner: str, job: Job, once: bool = False):
        """Yield the page's view of a run as it changes, until the run ends, it has been idle STREAM_IDLE_S
        (the page says to reload), or at once after the first view with `once`."""
        view, i, last_status = RunView(), 0, 0.0
        first, finished_once, last_new = True, False, time.monotonic()
        film_sent = None  # the epoch whose previews the page has: a filmstrip is 24 pictures, send it once
        diagnosis_sent = None  # likewise the confusion matrix and the worst images
        while True:
            new = job.wait_events(i, timeout=0)
            i += len(new)
            if new:
                last_new = time.monotonic()
            changed = any([view.add(ev) for ev in new])
            over = not job.is_active and i >= len(job.events)
            jobs = self.ctx.jobs
            wait = jobs.expected_wait_s(job) if job.status == QUEUED else None
            status = view.status(job, jobs.queue_position(job), jobs.running_count(), wait)
            now = time.monotonic()
            if first or changed or over:
                ckpt, choices = gr.skip(), gr.skip()
                if first:
                    ckpt = None
                if over and not finished_once:
                    finished_once = True
                    ckpt = self._checkpoint_copy(job)
                    value = f"run:{job.id}" if job.best_checkpoint is not None else gr.skip()
                    choices = gr.update(choices=model_choices(self.ctx, owner), value=value)
                film = gr.skip() if not first and view.previews_from is film_sent else view.filmstrip()
                film_sent = view.previews_from
                fresh = first or view.diagnosis_from is not diagnosis_sent
                confusion, worst = (view.confusion(), view.worst()) if fresh else (gr.skip(), gr.skip())
                diagnosis_sent = view.diagnosis_from
                yield [status, view.figure(), view.table(), film, ckpt, confusion, worst, choices]
                first, last_status = False, now
            elif now - last_status >= 1.0 and (new or job.status == QUEUED):
                yield [status, *[gr.skip()] * len(self.watch_outputs)]
                last_status = now
            if over or once:
                return
            if now - last_new > STREAM_IDLE_S and job.status != QUEUED:
                yield [
                    status + "\n\n*This live view paused (nothing new for a while). Reload the page to see "
                    "the latest.*",
                    *[gr.skip()] * len(self.watch_outputs),
                ]
                return
            await asyncio.sleep(0.25)

    @user_errors
    def export_onnx(self, token: str, run_id: str):
        job = self.ctx.jobs.get(self.ctx.owner(token), run_id)
        if job.best_checkpoint is None:
            raise gr.Error("This run has no checkpoint yet: one is saved when its first epoch ends.")
        when = time.strftime("%Y%m%d-%H%M", time.localtime(job.created))  # as the checkpoint download is named
        return gr.update(value=str(export_onnx_zip(self.ctx, Path(job.best_checkpoint), f"run-{when}")), visible=True)

    def check_weights(self, path: str | None):
        """Check an encoder-weights upload the moment it arrives (a zip bomb is refused before any run reads it);
        a file that fails is taken off the page with the reason."""
        if not path:
            return gr.skip()
        try:
            check_weights_file(path)
        except ConfigError as e:
            gr.Warning(sentence(str(e)), title="Encoder weights")
            return None
        return gr.skip()

    @user_errors
    def filmstrip_gif(self, token: str, run_id: str):
        """This browser's run's filmstrip history as an animated GIF: one frame per epoch (up to
        filmstrip.MAX_GIF_FRAMES, spread evenly), for slides."""
        from segdemo.core import filmstrip

        owner = self.ctx.owner(token)
        job = self.ctx.jobs.get(owner, run_id) if run_id else self.ctx.jobs.latest_for(owner)
        if job is None:
            raise gr.Error("There is no run yet: press Train. Its filmstrip is kept after every epoch.")
        when = time.strftime("%Y%m%d-%H%M", time.localtime(job.created))
        frames = filmstrip.frames(job.run_dir)
        newest = frames[-1].stat().st_mtime_ns if frames else 0
        # made once per run and number of frames, served until the run expires, like the checkpoint
        path = self.ctx.served(
            ("gif", job.id, len(frames), newest),
            f"segdemo-run-{when}-filmstrip.gif",
            lambda dst: filmstrip.write_gif(job.run_dir, dst),
            job,
        )
        return gr.update(value=path, visible=True)

    def _checkpoint_copy(self, job: Job) -> str | None:
        """The best checkpoint, copied where Gradio can serve it (run folders never are), until the run expires."""
        best = job.best_checkpoint
        if best is None:
            return None
        when = time.strftime("%Y%m%d-%H%M", time.localtime(job.created))
        return self.ctx.download_copy(job, best, f"segdemo-run-{when}-best.safetensors")

    @user_errors
    def run_info(self, token: str, run_id: str = "") -> dict:
        """A run as JSON: status, queue position, message, classes, one record per finished epoch and, for the
        newest epoch, where it fails (the confusion matrix and the worst validation images by name and mIoU)."""
        owner = self.ctx.owner(token)
        job = self.ctx.jobs.get(owner, run_id) if run_id else self.ctx.jobs.latest_for(owner)
        if job is None:
            raise gr.Error("This browser session has no runs yet; press Train.")
        started = job.last(Started)
        return {
            "run_id": job.id,
            "status": job.status,
            "queue_position": self.ctx.jobs.queue_position(job),
            "expected_wait_s": self.ctx.jobs.expected_wait_s(job) if job.status == QUEUED else 0.0,
            "message": job.message,
            "classes": list(started.class_names) if started else [],
            "device": started.device if started else None,
            "events": [type(e).__name__ for e in job.events if not isinstance(e, Progress)],
            "epochs": [
                {
                    "epoch": e.epoch,
                    "train_loss": e.train_loss,
                    "val_loss": e.val_loss,
                    "miou": e.miou,
                    "pixel_accuracy": e.pixel_accuracy,
                    "per_class_iou": e.per_class_iou,
                    "is_best": e.is_best,
                }
                for e in job.events
                if isinstance(e, EpochEnd)
            ],
            "where_it_fails": _where_it_fails(job, started),
            "has_checkpoint": job.best_checkpoint is not None,
            "finished": job.status in (DONE, STOPPED, FAILED),
            "created": job.created,  # server clock, seconds: queue waits and overlaps for the load test
            "started": job.started,
            "finished_at": job.finished,
        }


def _where_it_fails(job: Job, started: Started | None) -> dict | None:
    """The newest epoch's confusion (metrics.confusion_to_dict) and worst images, or None before the first."""
    ev = next((e for e in reversed(job.events) if isinstance(e, EpochEnd) and e.confusion is not None), None)
    if ev is None or started is None:
        return None
    return {
        "epoch": ev.epoch,
        "confusion": confusion_to_dict(ev.confusion, started.class_names),
        "worst_images": [{"name": p.name, "miou": p.miou} for p in ev.worst],
    }


def _shrink_pair(image, mask):
    """A sample picture for the data check: longest side at most SAMPLE_MAX_SIDE."""
    import cv2

    h, w = image.shape[:2]
    f = max(h, w) / SAMPLE_MAX_SIDE
    if f <= 1:
        return image, mask
    size = (max(1, round(w / f)), max(1, round(h / f)))
    return (
        cv2.resize(image, size, interpolation=cv2.INTER_AREA),
        cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST),
    )


def _report_markdown(report) -> str:
    pairs = report.pairs or {}
    if "train" in pairs or "val" in pairs:
        count = (
            " + ".join(
                f"{v} {'training' if k == 'train' else 'validation' if k == 'val' else k}" for k, v in pairs.items()
            )
            + " pairs"
        )
    else:
        count = f"{report.total_pairs} pairs (20% are kept aside for validation)"
    lines = []
    if report.ok:
        lines.append(
            f"**✓ Ready to train:** {count}"
            + (f" · {len(report.class_names)} classes" if report.class_names else "")
            + (f" · masks: {report.encoding}" if report.encoding and report.encoding != "ids" else "")
        )
    else:
        lines.append("**✗ This data cannot be used yet.** Fix the problems below and choose the data again:")
        lines += [f"- {md(public(p))}" for p in report.problems[:12]]
        if len(report.problems) > 12:
            lines.append(f"- … and {len(report.problems) - 12} more")
    if report.warnings:
        lines.append("")
        lines.append("Worth knowing:")
        lines += [f"- {md(public(w.text))}" for w in report.warnings[:8]]
    return "\n".join(lines)


def _classes_html(report, classes: ClassSet | None) -> str:
    if classes is None and not report.class_names:
        return ""
    if classes is None:
        classes = ClassSet.default(report.class_names)
    shares = [float(report.pixel_share.get(n, 0.0)) for n in classes.names] if report.pixel_share else None
    note = ""
    if shares and min(shares) < 0.05:
        rare = classes.names[shares.index(min(shares))]
        note = (
            f'<div style="font-size:0.9em;opacity:0.8">"{esc(rare)}" covers under 5% of the pixels: with plain '
            "cross-entropy the net can nearly ignore it; Dice or CE + Dice keeps it in play.</div>"
        )
    return (
        '<div style="font-size:0.9em;opacity:0.8">Classes and their share of the labelled pixels:</div>'
        + legend_html(classes, shares)
        + note
    )
