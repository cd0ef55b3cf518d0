"""The Train settings, named once: each one's /train parameter name, its widget, where it lives in a RunConfig,
and how Compare names it in a table; the choices' labels (from the registries); build_config, which turns the
page's values into a checked RunConfig; and the helpers that keep a page's preset plan (see TrainTab._plan).

Train lays the widgets out from SETTINGS and ROWS; Compare reads SETTINGS to show a run's settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from segdemo.core.config import LITE, RunConfig, quick_cpu_preset, use_encoder
from segdemo.core.encoders import ENCODERS as ENCODER_REGISTRY
from segdemo.core.losses import LOSSES as LOSS_REGISTRY
from segdemo.core.weights_file import check_weights_file
from segdemo.data.sources import SOURCES, page_source
from segdemo.errors import ConfigError
from segdemo.training import recipes
from segdemo.ui.errors import user_error

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
    put: Callable[[RunConfig, Any], object]  # the page's value into a config (what it returns is unused);
    # ValueError/TypeError for a non-number
    short: str = ""  # how a table (Compare) names it; default: the name, capitalised

    @property
    def title(self) -> str:
        return self.short or self.name.replace("_", " ").capitalize()


def _choice(options: list[tuple[str, str]], what: str) -> Callable[[Any], str]:
    values = [v for _, v in options]

    def check(v: Any) -> str:
        if v not in values:
            raise ConfigError(f"Choose {what} from the list: {', '.join(values)}.")
        return v

    return check


def _loss(cfg: RunConfig, v: Any) -> None:
    cfg.train.loss = _choice(LOSSES, "a loss")(v) if v not in (None, "") else cfg.train.loss  # empty: the preset's


def _time_budget(cfg: RunConfig, v: Any) -> None:
    minutes = float(v) if v not in (None, "") else 0.0
    if minutes < 0:
        raise ConfigError("The time budget cannot be negative; 0 means no limit.")
    cfg.train.time_budget_s = minutes * 60 or None
    cfg.train.lr_follows_time = bool(minutes)  # a budget: the rate ends there


def _weights(cfg: RunConfig, v: Any) -> None:
    path = v.get("path") if isinstance(v, dict) else v  # a FileData dict from the API, or a path
    if path in (None, ""):
        return
    if not str(path).lower().endswith((".pth", ".pt", ".safetensors")):
        raise ConfigError("Encoder weights must be a .pth, .pt or .safetensors file (a torchvision state dict).")
    check_weights_file(path)  # again here, whichever door the path came through: sizes before torch reads it
    cfg.model.encoder_weights = str(path)


def _train_images(cfg: RunConfig, v: Any) -> None:
    n = int(v)
    if n < 2:
        raise ConfigError("Train on at least 2 images.")
    cfg.data.train_images = n  # a cap; build_config turns it into the built-in data's size for "builtin"


# In the /train API's order, which is also the page's. A table, laid out by hand: one setting per entry.
# fmt: off
SETTINGS = (
    Setting("image_size", lambda v: gr.Slider(32, 512, v, step=32, label="Image size (px)", elem_id="image-size"),
            lambda c: c.data.image_size, lambda c, v: setattr(c.data, "image_size", int(v)), "Image size (px)"),
    Setting("epochs", lambda v: gr.Slider(1, 100, v, step=1, label="Epochs", elem_id="epochs"),
            lambda c: c.train.epochs, lambda c, v: setattr(c.train, "epochs", int(v))),
    Setting("batch_size", lambda v: gr.Slider(1, 64, v, step=1, label="Batch size", elem_id="batch-size"),
            lambda c: c.train.batch_size, lambda c, v: setattr(c.train, "batch_size", int(v))),
    Setting("learning_rate", lambda v: gr.Number(v, label="Learning rate", minimum=1e-5, maximum=0.5, step=1e-4),
            lambda c: c.train.learning_rate, lambda c, v: setattr(c.train, "learning_rate", float(v)), "Learning rate"),
    Setting("loss", lambda v: gr.Dropdown(LOSSES, value=v, label="Loss", info="On imbalanced classes, Dice (or "
                                          "CE + Dice) keeps small classes from being ignored; see Why? below."),
            lambda c: c.train.loss, _loss),
    Setting("width", lambda v: gr.Slider(4, 64, v, step=4, label="Width (channels of the first level)",
                                         elem_id="width"),
            lambda c: c.model.width, lambda c, v: setattr(c.model, "width", int(v)), "Width (channels)"),
    Setting("depth", lambda v: gr.Slider(2, 5, v, step=1, label="Depth (down-sampling steps)"),
            lambda c: c.model.depth, lambda c, v: setattr(c.model, "depth", int(v))),
    Setting("upsampling", lambda v: gr.Radio(UPSAMPLING, value=v, label="Up-sampling in the decoder",
                                             info="Learned (transposed) or fixed (bilinear); see Why? below."),
            lambda c: c.model.upsampling,
            lambda c, v: setattr(c.model, "upsampling", "bilinear" if v == "bilinear" else "transposed"),
            "Up-sampling"),
    Setting("augment", lambda v: gr.Checkbox(v, label="Augmentation (flips, small turns, brightness)"),
            lambda c: c.data.augment, lambda c, v: setattr(c.data, "augment", bool(v)), "Augmentation"),
    Setting("train_images", lambda v: gr.Slider(16, 2000, v, step=16, label=TRAIN_IMAGES_LABEL, elem_id="train-images",
                                                info="Fewer = faster; for your own data it is a cap."),
            lambda c: c.data.builtin_train, _train_images, TRAIN_IMAGES_LABEL),
    Setting("time_budget", lambda v: gr.Slider(0, 60, v, step=0.25, label="Time budget (minutes)",
                                               elem_id="time-budget", info="The run stops here with its best "
                                               "checkpoint, and the learning rate reaches its end here. 0: no limit."),
            lambda c: round((c.train.time_budget_s or 0) / 60, 2), _time_budget),
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


PAGE_OPENED = "page opened, no plan yet"
RUN_SHOWN = tuple(s.name for s in SETTINGS if s.name not in ("train_images", "encoder_weights"))


def same_value(page: Any, opening: Any) -> bool:
    """A page value still equal to the page's opening one (numbers compared as numbers: 8 == 8.0)."""
    if isinstance(opening, bool) or not isinstance(opening, int | float):
        return page == opening
    try:
        return float(page) == float(opening)
    except (TypeError, ValueError):
        return False


def planned_for(preset: Any, dataset: str, zip_file: str | None) -> str:
    """The page's plan is for this preset and data (the planned State): Train pressed with another preset or
    other data than the page's plan was made for plans itself. (A moved images slider is the student's own.)"""
    return f"{preset_key(preset)}|{dataset}|{zip_file or ''}"


def plan_key(preset: Any, dataset: str, zip_file: str | None, train_images: Any) -> str:
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


def preset_key(preset: Any) -> str:
    """A preset's key from the page or the API (Gradio has checked it is one of the choices)."""
    return preset if isinstance(preset, str) and preset in recipes.BY_KEY else QUICK


def build_config(preset: str, dataset: str, **values: Any) -> RunConfig:
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
    n, cfg.data.train_images = cfg.data.train_images, None
    assert n is not None  # the train_images setting above always sets it
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
