"""Predict tab: pick a model (shipped, one of your runs, or an uploaded checkpoint), segment images (or a webcam
photo), compare with a ground truth when you have one (slider, error map, confusion), change the opacity or
hide classes without running the model again, look at per-class probabilities, download the mask."""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

import gradio as gr
import matplotlib
import numpy as np
import pandas as pd
from gradio.components import Component
from PIL import Image

from segdemo.core.predict import FilePrediction, MaskIndex, Predictor
from segdemo.core.viz import confusion_html, legend_html
from segdemo.imageio import IMAGE_SUFFIXES, load_image_oriented
from segdemo.server import zerogpu
from segdemo.server.limits import LimitError, RateLimiter, ensure_free_disk
from segdemo.server.tokens import hash_owner
from segdemo.training import familiar
from segdemo.ui.context import EXAMPLES_DIR, AppContext
from segdemo.ui.errors import user_errors
from segdemo.ui.listeners import HEAVY, Update, bump
from segdemo.ui.models import checkpoint_for, export_onnx_zip, model_choices, uploaded_checkpoint
from segdemo.ui.predict_inputs import _file_list, _made_from, _names, _pick
from segdemo.ui.predict_tables import SCORED_COLUMNS, details, model_card, per_class_table, summary
from segdemo.ui.views import View, ViewCache
from segdemo.ui.words import safe_stem

SLIDER_LABEL = "Left: the image, or the true mask overlaid when there is one · right: the prediction overlaid"
REDRAWS_PER_S = 30  # per browser; a hand on the slider, one redraw after another, stays well under it
OPACITY_STEP = 0.05  # the slider's step, applied on the server too
MAX_SIDE = 2048  # larger photos are shrunk before predicting: a 40-megapixel softmax would need gigabytes
IMAGE_TYPES = sorted(IMAGE_SUFFIXES)
log = logging.getLogger("segdemo.ui")


def heatmap(p: np.ndarray, cmap: str = "inferno") -> np.ndarray:
    """(H, W) probabilities 0..1 -> (H, W, 3) uint8 through a matplotlib colormap (dark 0, bright 1)."""
    rgba = matplotlib.colormaps[cmap](np.clip(p, 0, 1))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def _alpha(alpha: Any) -> float:
    """The opacity on the slider's own steps: a client sending every float in between would otherwise make a
    new picture (a new file in Gradio's cache) for each."""
    try:
        a = min(1.0, max(0.0, float(alpha if alpha is not None else 0.5)))
    except (TypeError, ValueError, OverflowError):
        raise gr.Error("Overlay opacity is a number between 0 and 1.") from None
    if a != a:  # NaN
        raise gr.Error("Overlay opacity is a number between 0 and 1.")
    return round(round(a / OPACITY_STEP) * OPACITY_STEP, 2)


def _hidden(shown: Any, k: int) -> list[int]:
    """The class ids NOT ticked in "Classes to colour" (None: all are shown)."""
    if shown is None:
        return []
    if not isinstance(shown, list | tuple) or not all(isinstance(c, int) and 0 <= c < k for c in shown):
        raise gr.Error(f"Classes to colour: a list of class numbers from 0 to {k - 1}.")
    return sorted(set(range(k)) - set(shown))


class PredictTab:
    def __init__(self, ctx: AppContext, token: gr.BrowserState) -> None:
        self.ctx, self.token = ctx, token
        self.views = ViewCache()  # the last predictions per browser: opacity and class toggles redraw them
        # redraws skip the queue (a queued one took ~35 ms more): a cap per browser keeps a flood off the CPU
        self.redraws = RateLimiter(REDRAWS_PER_S, 1.0, "redraws")
        gr.Markdown(
            "Segment new images (or a webcam photo) with a trained model. Add the true mask (same file name) to "
            "score the prediction and see where it fails; without one you see how much of the image each class "
            "covers. The opacity slider and the class ticks redraw at once, without running the model again."
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                self._model_panel()
                self._inputs_panel()
            with gr.Column(scale=3, min_width=420):
                self._overlay_panel()
                self._maps_panel()
        self.outputs = [
            self.slider,
            self.out_color,
            self.legend,
            self.table,
            self.summary,
            self.errors,
            self.confusion,
            self.prob_maps,
            self.mask_file,
            self.details,
            self.shown,
            self.view,
        ]

    # -- layout, by section (called inside __init__'s columns, in page order) ------------------------------

    def _model_panel(self) -> None:
        """The model: shipped, a run, or an uploaded checkpoint; what it is; its ONNX download."""
        shipped = self.ctx.default_checkpoint.is_file()
        self.model = gr.Dropdown(
            model_choices(self.ctx, None),
            value="default" if shipped else None,
            allow_custom_value=True,
            label="Model",
            elem_id="model-choice",
            info="The shipped model, one of your finished runs, or a file.",
        )
        self.ckpt_file = gr.File(
            label="Checkpoint file (.safetensors saved by segdemo)",
            file_types=[".safetensors"],
            visible=False,
            elem_id="checkpoint-upload",
        )
        self.model_info = gr.Markdown(self._shipped_note(shipped), elem_id="model-info")
        self.export_btn = gr.Button("Download this model as ONNX", size="sm", elem_id="export-onnx")
        self.export_file = gr.File(
            label="Take-home bundle: ONNX model, predict_onnx.py, README.md, requirements.txt",
            interactive=False,
            visible=False,
            elem_id="export-file",
        )

    def _inputs_panel(self) -> None:
        """What to segment: images and optional masks, a webcam photo, the picker, the examples."""
        self.images = gr.File(
            label="Images (one or more)",
            file_count="multiple",
            file_types=IMAGE_TYPES,
            elem_id="predict-images",
            height=130,
        )
        self.masks = gr.File(
            label="Ground-truth masks, optional (same file names as the images)",
            file_count="multiple",
            file_types=IMAGE_TYPES,
            elem_id="predict-masks",
            height=130,
        )
        with gr.Accordion("Or take a photo with the webcam", open=False):
            self.webcam = gr.Image(
                sources=["webcam"],
                type="filepath",
                format="png",
                label="Webcam: take a photo and it is segmented",
                height=240,
                elem_id="webcam",
            )
        self.show = gr.Dropdown([], label="Image to show", visible=False, allow_custom_value=True)
        self.probs = gr.Checkbox(False, label="Show per-class probability maps")
        self.go = gr.Button("Segment", variant="primary", elem_id="segment-btn")
        self.example_files = [
            (p, EXAMPLES_DIR / "masks" / p.name)
            for p in sorted(EXAMPLES_DIR.glob("*.png"))
            if (EXAMPLES_DIR / "masks" / p.name).is_file()
        ]
        self.example_gallery = gr.Gallery(
            [str(img) for img, _ in self.example_files],
            label="Examples: click one (it comes with its true mask)",
            columns=4,
            height=140,
            allow_preview=False,
            object_fit="contain",
            interactive=False,
            visible=bool(self.example_files),
            elem_id="examples",
        )

    def _overlay_panel(self) -> None:
        """The prediction over the image (or the truth), its opacity and classes, the legend and numbers."""
        # photos travel as JPEG: PNG-encoding a noisy photo took most of a request (bench/README.md,
        # app speed); the masks stay PNG so their colours stay exact
        self.slider = gr.ImageSlider(
            label=SLIDER_LABEL,
            format="jpeg",
            interactive=False,
            max_height=420,
            elem_id="out-slider",
        )
        with gr.Row():
            self.alpha = gr.Slider(
                0, 1, 0.5, step=OPACITY_STEP, label="Overlay opacity", elem_id="opacity", min_width=160
            )
            self.shown = gr.CheckboxGroup(
                [],
                label="Classes to colour (untick to see the image there)",
                visible=False,
                elem_id="shown-classes",
            )
        self.legend = gr.HTML(label="legend")
        self.summary = gr.Markdown(label="summary", elem_id="predict-summary")
        self.table = gr.Dataframe(
            value=pd.DataFrame(columns=SCORED_COLUMNS),
            label="Per class",
            interactive=False,
            wrap=True,
            elem_id="predict-table",
        )

    def _maps_panel(self) -> None:
        """The colour mask, error map, confusion, probability maps, the mask download and hidden state."""
        with gr.Row():
            self.out_color = gr.Image(
                label="Predicted mask",
                format="png",
                interactive=False,
                height=260,
                elem_id="out-color",
            )
            self.errors = gr.Image(
                label="Error map: green right · red wrong class · yellow missed (predicted background) · grey ignored",
                format="png",
                interactive=False,
                height=260,
                visible=False,
                elem_id="error-map",
            )
        self.confusion = gr.HTML(elem_id="predict-confusion")
        self.prob_maps = gr.Gallery(
            label="Probability of each class (dark 0, bright 1)",
            columns=4,
            height=210,
            format="png",
            visible=False,
            object_fit="contain",
            elem_id="prob-maps",
        )
        self.mask_file = gr.File(
            label="Predicted mask: a PNG of class ids (0, 1, 2, …)",
            interactive=False,
            elem_id="mask-file",
        )
        self.details = gr.JSON(label="details", visible=False)
        self.view = gr.Textbox(visible=False, label="view id")  # what /redraw redraws
        self.model_ready = gr.State(0)  # counts models chosen by hand: a change redraws the picture
        self.seen = gr.State([])  # the image names the page had before the latest change (see _pick)
        self.made_from = gr.State("")  # what the picture on the page was made from (see catch_up)

    def _shipped_note(self, shipped: bool) -> str:
        if shipped:
            return self.describe_path(self.ctx.default_checkpoint)
        return (
            f"The shipped model is not installed on this server (`{self.ctx.default_checkpoint.name}` is "
            "missing). Train a run in the **Train** tab, or upload a checkpoint."
        )

    # -- wiring ---------------------------------------------------------------------------------------

    def wire(self, demo: gr.Blocks, tab: gr.Tab) -> None:  # noqa: ARG002 - every tab's wire takes the demo
        """The tab's listeners, each group next to its handlers below (in this order: the queue keeps it)."""
        self._wire_predict()
        self._wire_models()
        self._wire_redraw()
        self._wire_inputs(tab)

    def _show_maps(self) -> dict[str, Any]:
        """Listener arguments: the error map only with a ground truth, the probability maps only when asked for."""
        return dict(
            fn=self.toggle, inputs=self.details, outputs=[self.errors, self.prob_maps], api_visibility="private",
            queue=False,
        )  # fmt: skip

    @staticmethod
    def toggle(details: Any) -> tuple[Update, Update]:
        """Show the error map only with a ground truth, the probability maps only when asked for."""
        d = details if isinstance(details, dict) else {}
        return gr.update(visible=bool(d.get("ground_truth"))), gr.update(visible=bool(d.get("probability_maps")))

    # -- handlers -------------------------------------------------------------------------------------

    @staticmethod
    def on_images(images: Any, show: Any, seen: Any = None) -> Update:
        """The image picker for these uploads: the newest upload, else the picked name while it is still there."""
        names = _names(images)
        return gr.update(choices=names, value=_pick(names, show, seen), visible=len(names) > 1)

    def _wire_inputs(self, tab: gr.Tab) -> None:
        self.webcam.change(
            self.use_photo, self.webcam, [self.images, self.masks], api_visibility="private", queue=False
        )
        self.example_gallery.select(
            self.pick_example, None, [self.images, self.masks], api_visibility="private", queue=False
        )
        tab.select(self.refresh_models, [self.token, self.model], self.model, api_visibility="private", queue=False)

    @staticmethod
    def use_photo(photo: Any) -> tuple[list[str] | Update, Update | None]:
        """A webcam photo becomes the one image to segment (and any masks go: none of them is its mask)."""
        if not photo:
            return gr.skip(), gr.skip()
        return [photo], None

    def pick_example(self, evt: gr.SelectData) -> tuple[list[str], list[str]]:
        img, mask = self.example_files[evt.index]
        return [str(img)], [str(mask)]

    # -- the model ------------------------------------------------------------------------------------------

    def _wire_models(self) -> None:
        heavy: dict[str, Any] = dict(concurrency_id=HEAVY)
        ready = bump(self.model_ready)
        self.model.input(
            lambda m: gr.update(visible=m == "upload"),
            self.model,
            self.ckpt_file,
            api_visibility="private",
            queue=False,
        ).then(
            self.describe,
            [self.token, self.model, self.ckpt_file],
            self.model_info,
            api_visibility="private",
            **heavy,
        ).success(**ready)
        # a model put on the page by something else (the Train tab selects a run that just ended): the picture
        # shown was made by the one before, and its score must not stand beside the new model's name, so the
        # picture's own listener (always_last, then catch_up) makes it again
        self.model.change(
            self.describe_quiet,
            [self.token, self.model, self.ckpt_file],
            self.model_info,
            api_visibility="private",
            **heavy,
        ).success(**ready)
        self.ckpt_file.upload(
            self.on_checkpoint, self.ckpt_file, [self.model, self.model_info], api_visibility="private", **heavy
        ).success(**ready)
        self.export_btn.click(
            self.export_onnx,
            [self.token, self.model, self.ckpt_file],
            self.export_file,
            api_visibility="private",
            **heavy,
        )

    def refresh_models(self, token: Any, current: Any) -> Update:
        choices = model_choices(self.ctx, token)
        values = [v for _, v in choices]
        return gr.update(choices=choices, value=current if current in values else None)

    def resolve(self, token: Any, model: str | None, ckpt_file: Any) -> Path:
        """The checkpoint file for a model choice; gr.Error with what to do when there is none."""
        return checkpoint_for(self.ctx, token, model, ckpt_file)

    @user_errors
    def export_onnx(self, token: Any, model: Any, ckpt_file: Any) -> Update:
        """The chosen model as ONNX (with its meta.json and a predict script), zipped for download."""
        src = self.resolve(token, model, ckpt_file)
        self.ctx.predictor(src)  # the same checks as predicting with it (format, shapes, memory) first
        name = src.stem  # the shipped model's file name, or the uploaded checkpoint's
        if isinstance(model, str) and model.startswith("run:"):
            job = self.ctx.jobs.get(self.ctx.owner(token), model[4:])
            name = "run-" + time.strftime("%Y%m%d-%H%M", time.localtime(job.created))
        return gr.update(value=str(export_onnx_zip(self.ctx, src, name)), visible=True)

    def describe_path(self, path: Path) -> str:
        return model_card(path)

    @user_errors
    def describe(self, token: Any, model: Any, ckpt_file: Any) -> str:
        if model == "upload" and not ckpt_file:
            return "Upload a checkpoint file (.safetensors) saved by segdemo."
        if model == "default" and not self.ctx.default_checkpoint.is_file():
            return self._shipped_note(False)
        return self.describe_path(self.resolve(token, model, ckpt_file))

    def describe_quiet(self, token: Any, model: Any, ckpt_file: Any) -> str | Update:
        try:
            return self.describe(token, model, ckpt_file)
        except gr.Error:  # a user mistake (user_errors made it a gr.Error; a bug was logged there)
            return gr.skip()

    @user_errors
    def on_checkpoint(self, ckpt_file: Any) -> tuple[Update, Update | str]:
        """Validate an uploaded checkpoint fully (format, config, shapes, finite weights) before using it."""
        if not ckpt_file:
            return gr.skip(), gr.skip()
        p = uploaded_checkpoint(ckpt_file)
        self.ctx.predictor(p)  # load_checkpoint: CheckpointError -> a gr.Error with its sentence
        return gr.update(value="upload"), self.describe_path(p)

    # -- segmenting -------------------------------------------------------------------------------------

    def _wire_predict(self) -> None:
        inputs = [self.token, self.model, self.ckpt_file, self.images, self.masks, self.show, self.alpha, self.probs]
        show = self._show_maps()
        heavy: dict[str, Any] = dict(concurrency_id=HEAVY)  # one limit for all that load a model or predict
        self.go.click(self.predict, inputs, self.outputs, api_name="predict", **heavy).then(**show)
        self.images.change(self.on_images, [self.images, self.show], self.show, api_visibility="private", queue=False)
        # One listener for every input of the picture, a model chosen by hand included: while it runs, a newer
        # change waits and then runs with what the page holds by then, so images, masks and a checkpoint
        # uploaded a moment apart end in one picture scored against the masks. (Separate listeners sharing the
        # queue's two slots finish in either order, and one that read the page before the masks arrived could
        # leave its unscored picture on top: a CI run failed on it.)
        gr.on(
            [self.images.change, self.masks.change, self.show.input, self.probs.input, self.model_ready.change],
            self.auto_predict,
            [*inputs, self.seen],
            [*self.outputs, self.show, self.seen, self.made_from],  # seen: written only here (see _pick)
            api_visibility="private",
            trigger_mode="always_last",
            **heavy,
        ).then(
            self.catch_up,
            [*inputs, self.seen, self.made_from],
            [*self.outputs, self.show, self.seen, self.made_from],
            api_visibility="private",
            **heavy,
        ).then(**show)

    def catch_up(self, *args: Any) -> dict[Component, Any]:
        """Segment again when the page's inputs changed while the picture was being made: a step chained after
        it reads the page as it is then, so masks that arrived a moment after the images still end scored.
        (A change during a run should itself run again, always_last; under load a CI run still ended unscored.)"""
        *values, seen, made_from = args
        token, model, ckpt_file, images, masks, show, alpha, probability_maps = values
        if _made_from(model, ckpt_file, images, masks) == made_from:
            return {self.made_from: made_from}  # nothing new: the picture stands (an empty dict is no answer)
        return self.auto_predict(token, model, ckpt_file, images, masks, show, alpha, probability_maps, seen)

    def auto_predict(
        self,
        token: Any,
        model: Any,
        ckpt_file: Any,
        images: Any,
        masks: Any,
        show: Any,
        alpha: Any,
        probability_maps: Any,
        seen: Any = None,
    ) -> dict[Component, Any]:
        if not images:
            return {
                **dict.fromkeys(self.outputs),
                **{self.legend: "", self.summary: "", self.confusion: "", self.details: {}, self.view: ""},
                self.shown: gr.update(choices=[], value=[], visible=False),
                self.seen: [],
                self.made_from: _made_from(model, ckpt_file, images, masks),
            }
        picker = self.on_images(images, show, seen)  # this run may come before on_images has reached the page
        no_model = model is None or (model == "default" and not self.ctx.default_checkpoint.is_file())
        if no_model or (model == "upload" and not ckpt_file):
            return {  # the other outputs keep what they show
                self.show: picker,
                self.seen: _names(images),
                self.made_from: _made_from(model, ckpt_file, images, masks),
                self.summary: "**Choose a model above first**: upload a checkpoint file, or train a run in the Train "
                "tab (it appears in the list when it ends)."
                if no_model
                else "**Upload the checkpoint file** (.safetensors) above, then the images are segmented.",
            }
        out = self.predict(token, model, ckpt_file, images, masks, picker["value"], alpha, probability_maps)
        made_from = _made_from(model, ckpt_file, images, masks)
        return {**out, self.show: picker, self.seen: _names(images), self.made_from: made_from}

    @user_errors
    def predict(
        self,
        token: str | None,
        model: str | None,
        checkpoint_file: str | None,
        images: list[str] | None,
        masks: list[str] | None,
        show: Any,  # untyped: checked here, so a wrong type gets a sentence, not Gradio's generic error
        alpha: Any,
        probability_maps: Any,
    ) -> dict[Component, Any]:
        """Segment one of the uploaded images (`show`, by file name; default the first).

        Returns: the slider's two pictures (image | prediction overlaid, or with a ground truth, truth |
        prediction overlaid), the colour mask, legend HTML, per-class table, summary text, error map and
        confusion HTML (with a ground truth), probability maps (when asked), the mask as a PNG of class ids,
        the numbers as JSON, the classes to colour, and the view id that /redraw takes.
        """
        images, masks = _file_list(images, "images"), _file_list(masks, "masks")
        if not images:
            raise gr.Error("Upload an image first, or click one of the examples below.")
        path = next((p for p in images if Path(p).name == show), images[0])
        name = Path(path).name
        decoded = load_image_oriented(path, name)  # the student's own file is checked before any model is loaded
        predictor = self.ctx.predictor(self.resolve(token, model, checkpoint_file))  # CheckpointError: a sentence
        index = MaskIndex(masks, len(images))
        mask_path = index.mask_for(path)
        if mask_path is None:
            index.require_a_match(images)
        alpha, probability_maps = _alpha(alpha), bool(probability_maps)
        t0 = time.perf_counter()
        result = predictor.predict_file(
            path,
            mask_path,
            alpha=alpha,
            probabilities=probability_maps,
            max_side=MAX_SIDE,
            decoded=decoded,
            # inside a @spaces.GPU function: on ZeroGPU the GPU is lent for this call only
            run=functools.partial(zerogpu.predict, predictor),
        )
        ms = 1e3 * (time.perf_counter() - t0)
        log.info("Predict: the model ran on a %dx%d image (%.0f ms)", *result.image.shape[1::-1], ms)
        return self._shown(token, predictor, result, mask_path, alpha, probability_maps)

    def _shown(
        self,
        token: str | None,
        predictor: Predictor,
        result: FilePrediction,
        mask_path: str | None,
        alpha: float,
        probability_maps: bool,
    ) -> dict[Component, Any]:
        """A prediction as the page's outputs; kept as a view for this browser's opacity and class toggles."""
        image, p, name, classes = result.image, result.prediction, result.name, predictor.classes
        unlike = familiar.unlike(familiar.stats_of(predictor.ckpt.meta, predictor.config), image)
        view = View.for_display(image, p.mask, result.target, classes)
        # an API client without a token gets no view
        view_id = (
            self.views.put(token, view) if isinstance(token, str) and self.ctx.jobs.valid_owner_token(token) else ""
        )
        ckpt_metrics = predictor.ckpt.metrics
        maps = [(heatmap(p.probs[c]), n) for c, n in enumerate(classes.names)] if p.probs is not None else None
        mask_png = self.ctx.scratch("predict") / f"{safe_stem(name)}_mask.png"
        Image.fromarray(p.mask).save(mask_png)  # 2-D uint8: a greyscale PNG
        return {
            self.slider: view.pair(alpha),
            self.out_color: p.color,
            self.legend: legend_html(classes, p.pixel_share),
            self.table: per_class_table(classes, p, ckpt_metrics),
            self.summary: summary(result, mask_path and Path(mask_path).name, ckpt_metrics, unlike),
            self.errors: p.errors,
            self.confusion: "" if p.confusion is None else confusion_html(p.confusion, classes, f"this image ({name})"),
            self.prob_maps: maps if probability_maps else None,
            self.mask_file: str(mask_png),
            self.details: {**details(name, classes, p, ckpt_metrics, probability_maps), "unlike_training": unlike},
            self.shown: gr.update(
                choices=[(n, i) for i, n in enumerate(classes.names)],
                value=list(range(classes.num_classes)),
                visible=True,
            ),
            self.view: view_id,
        }

    def _wire_redraw(self) -> None:
        # opacity and class toggles redraw the kept prediction: no model, no queue, a few ms of blending
        redraw: dict[str, Any] = dict(
            fn=self.redraw,
            inputs=[self.token, self.view, self.alpha, self.shown],
            outputs=self.slider,
            queue=False,
            show_progress="hidden",
            trigger_mode="always_last",
        )
        self.alpha.input(**redraw, api_name="redraw")
        self.shown.input(**redraw, api_visibility="private")

    @user_errors
    def redraw(self, token: str, view: str, alpha: Any, shown: Any) -> Update | tuple[np.ndarray, np.ndarray]:
        """Redraw the last prediction (by its view id) at another opacity or with some classes left uncoloured
        (`shown`: the class numbers to colour, None for all), without running the model. Returns the slider's two
        pictures; only the browser that predicted may redraw."""
        owner = self.ctx.owner(token)
        if not view:
            return gr.skip()  # nothing segmented yet
        try:
            self.redraws.hit(hash_owner(owner))
        except LimitError:
            raise gr.Error("Too many redraws at once from this browser; move the slider again in a second.") from None
        v = self.views.get(owner, view)
        pair = v.pair(_alpha(alpha), _hidden(shown, v.classes.num_classes))
        ensure_free_disk(self.ctx.cache_dir)  # each new picture is a file in Gradio's cache
        return pair
