"""Train tab: choose and check data, pick settings, start/stop a run and watch it learn, epoch by epoch."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
from gradio.blocks import Block
from gradio.components import Component
from gradio.events import Dependency

from segdemo.core import speedups
from segdemo.core.weights_file import check_weights_file
from segdemo.errors import ConfigError, JobError
from segdemo.server.jobs import QUEUED
from segdemo.server.limits import LimitError
from segdemo.ui.context import AppContext, client_of
from segdemo.ui.data_report import ZIP_PROMPT, checked_data, classes_html, report_markdown
from segdemo.ui.errors import user_error, user_errors
from segdemo.ui.listeners import HEAVY, Update
from segdemo.ui.models import export_onnx_zip, model_choices, refuse_a_second_run
from segdemo.ui.plans import Plans
from segdemo.ui.run_stream import CURVE_COLORS, TABLE_COLUMNS, stream_run
from segdemo.ui.run_view import run_record
from segdemo.ui.settings import (
    DATASETS,
    PAGE_OPENED,
    PRESET_CHOICES,
    QUICK,
    ROWS,
    RUN_SHOWN,
    SETTINGS,
    TRAIN_IMAGES_LABEL,
    WHY_LOSS,
    WHY_OTHER,
    WHY_UPSAMPLING,
    build_config,
    planned_for,
    preset_values,
    same_value,
)
from segdemo.ui.words import public, sentence

log = logging.getLogger(__name__)


# not compared with a plan: the file of encoder weights (never planned) and the training-images cap (an input of
# the plan, which sets only its label)
NOT_COMPARED = ("encoder_weights", "train_images")


def _same(a: Any, b: Any) -> bool:
    """A setting's value on the page and as planned: numbers arrive from the browser as floats."""
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    return a == b


class TrainTab:
    """Builds the tab's widgets (inside an open gr.Tab) and wires its events."""

    def __init__(self, ctx: AppContext, token: gr.BrowserState) -> None:
        self.ctx, self.token = ctx, token
        self.plans = Plans(ctx)  # the preset's plan per data, made once: the page's and Train's are one
        gr.Markdown(
            "Pick the data, check it, choose settings and press **Train**. The curves, the per-class "
            "table and the validation filmstrip update after every epoch. Your run keeps going if "
            "you close the page; open it again to see it."
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=340):
                self._data_panel()
                self._settings_panel()
            with gr.Column(scale=3, min_width=420):
                self._run_panel()
                self._diagnosis_panel()
                self._downloads_panel()
        self.watch_outputs = [
            self.status,
            self.curves,
            self.table,
            self.filmstrip,
            self.checkpoint,
            self.confusion,
            self.worst,
        ]

    # -- layout, by section (called inside __init__'s columns, in page order) ------------------------------

    def _data_panel(self) -> None:
        """1. Data: which dataset (or a .zip), its check, its classes and a few samples."""
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

    def _settings_panel(self) -> None:
        """2. Settings: the preset, why it planned what it did, every setting, and why each matters."""
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
        # the settings' values as the last plan (or the page's opening) put them: a setting that differs now was
        # changed by the student, and a plan landing later keeps it (see replan)
        self.compared = [s.name for s in SETTINGS if s.name not in NOT_COMPARED]  # settings a plan puts in place
        self.plan_shown = gr.State({k: v[k] for k in self.compared})
        widgets = {}
        for row in ROWS:
            with gr.Row():
                for s in SETTINGS:
                    if s.name in row:
                        widgets[s.name] = s.widget(v[s.name])
        # by name, in SETTINGS order whatever the layout: /train's positional parameters follow it
        self.settings: dict[str, gr.Component] = {s.name: widgets[s.name] for s in SETTINGS}
        # the two settings the tab listens to, as their own kinds of component (their events are typed there)
        train_images, encoder_weights = widgets["train_images"], widgets["encoder_weights"]
        assert isinstance(train_images, gr.Slider) and isinstance(encoder_weights, gr.File)
        self.train_images, self.encoder_weights = train_images, encoder_weights
        with gr.Accordion("Why? Loss, up-sampling and the other settings", open=False):
            gr.Markdown(WHY_LOSS + WHY_UPSAMPLING + WHY_OTHER)

    def _run_panel(self) -> None:
        """3. Train and watch: the buttons, the status, the curves, per-class IoU and the confusion matrix."""
        gr.Markdown("### 3. Train and watch")
        with gr.Row():
            # enabled once the page has its session (ui/app.py: ready)
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

    def _diagnosis_panel(self) -> None:
        """The validation filmstrip and the worst validation images with their error maps."""
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

    def _downloads_panel(self) -> None:
        """The best checkpoint, its ONNX bundle and the filmstrip as a GIF."""
        self.checkpoint = gr.File(
            label="Best checkpoint of this run (.safetensors)",
            interactive=False,
            elem_id="best-checkpoint",
        )
        self.export_btn = gr.Button("Download the best checkpoint as ONNX", size="sm", elem_id="run-export-onnx")
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

    # -- wiring -----------------------------------------------------------------------------------------

    def wire(self, demo: gr.Blocks, predict_model: gr.Dropdown) -> None:
        """The tab's listeners, each group next to its handlers below (in this order: the queue keeps it)."""
        outs = [*self.watch_outputs, predict_model]
        checked = self._wire_data(demo)
        self._wire_plan(demo, checked)
        self._wire_train(outs)
        self._wire_stop()
        self._wire_export()
        self._wire_weights()
        self._wire_gif()
        self._wire_run_info()
        self.reattach_outputs = [self.run_id, *outs]

    # -- the data ---------------------------------------------------------------------------------------

    def _wire_data(self, demo: gr.Blocks) -> Dependency:
        self.dataset.change(
            lambda d: gr.update(visible=d == "zip"),
            self.dataset,
            self.zip_file,
            api_visibility="private",
            queue=False,
        )
        # the page's first check and every data change share one always_last listener, so a check of the data
        # the page opened with cannot land after the check of data the student chose a moment later
        return gr.on(
            [demo.load, self.dataset.change, self.zip_file.change, self.train_images.change],
            self.check_data,
            [self.dataset, self.zip_file, self.settings["train_images"]],
            [self.data_report, self.classes_html, self.samples],
            api_name="check_data",
            trigger_mode="always_last",
            concurrency_id=HEAVY,
        )

    @user_errors
    def check_data(self, dataset: str, zip_file: str | None, train_images: Any) -> tuple[str, str, list[Any]]:
        """Check the chosen data: pairs, classes with colours and pixel shares, a few samples, problems."""
        if dataset == "zip" and not zip_file:
            return ZIP_PROMPT, "", []
        cfg = build_config(QUICK, dataset, **{**preset_values(), "train_images": train_images or 768})
        if dataset == "zip" and zip_file:  # (a zip without its file returned above)
            cfg.data.source = zip_file
        report, classes, samples, _ = checked_data(self.ctx, cfg)
        return report_markdown(report), classes_html(report, classes), samples

    # -- the preset's plan ------------------------------------------------------------------------------

    def _wire_plan(self, demo: gr.Blocks, checked: Dependency) -> None:
        plan_inputs = [self.preset, self.dataset, self.zip_file, self.settings["train_images"]]
        plan_outputs = [*self.settings.values(), self.preset_why, self.planned]
        # a page is open: from now on its settings are a plan's only once one has landed (the planned key)
        demo.load(lambda: PAGE_OPENED, None, self.planned, queue=False, api_visibility="private")
        compared = [self.settings[n] for n in self.compared]
        # a preset chosen by hand plans every setting; what it put there is then what later plans compare with
        self.preset.input(self.apply_preset, plan_inputs, plan_outputs, api_name="plan", concurrency_id=HEAVY).then(
            lambda *vals: dict(zip(self.compared, vals, strict=True)),
            compared,
            self.plan_shown,
            queue=False,
            api_visibility="private",
        )
        # new data plans again, keeping what the student changed meanwhile: the plan is computed first (seconds,
        # with a speed probe), then lands in a quick step that reads the page as it is by then
        self.pending_plan = gr.State(None)
        checked.then(
            self.plan_quietly, plan_inputs, self.pending_plan, api_visibility="private", concurrency_id=HEAVY
        ).success(
            self.land_plan,
            {self.pending_plan, self.plan_shown, *compared},
            [*plan_outputs, self.plan_shown],
            api_visibility="private",
            queue=False,
        )

    @user_errors
    def apply_preset(
        self, preset: str, dataset: str, zip_file: str | None, train_images: Any, request: gr.Request | None = None
    ) -> dict[Component, Any]:
        """Plan the preset for the chosen data on this server: every setting, and one line saying why. A plan
        that needs a new speed probe (seconds of every core) counts against the caller's address."""
        with speedups.probes_charged_to(lambda: self.ctx.probes.hit(client_of(request))):
            return self._apply_preset(preset, dataset, zip_file, train_images)

    @user_errors
    def plan_quietly(
        self, preset: str, dataset: str, zip_file: str | None, train_images: Any, request: gr.Request | None = None
    ) -> dict[str, Any]:
        """The preset's plan for new data, not yet on the page (land_plan puts it there)."""
        out = self.apply_preset(preset, dataset, zip_file, train_images, request)
        return {name: out[c] for name, c in {**self.settings, "why": self.preset_why, "planned": self.planned}.items()
                if c in out}  # fmt: skip

    def land_plan(self, page: dict[Component, Any]) -> dict[Component, Any]:
        """Put a computed plan on the page, except the settings the student changed since the last plan landed
        (a plan that lands after an edit must not undo it); remember what this plan put there."""
        plan = page[self.pending_plan]
        if not plan:
            return {}
        names = self.compared
        shown = page[self.plan_shown] or {}
        edited = {n for n in names if n in shown and not _same(page[self.settings[n]], shown[n])}
        out: dict[Component, Any] = {
            self.settings[n]: v for n, v in plan.items() if n in self.settings and n not in edited
        }
        out[self.preset_why], out[self.planned] = plan.get("why", ""), plan.get("planned")
        out[self.plan_shown] = {n: shown.get(n) if n in edited else plan.get(n, shown.get(n)) for n in names}
        return out

    def _apply_preset(self, preset: str, dataset: str, zip_file: str | None, train_images: Any) -> dict[Component, Any]:
        values, why, n_train = self.plans.get(preset, dataset, zip_file, train_images)
        label = TRAIN_IMAGES_LABEL
        if dataset != "builtin" and n_train is not None:  # a cap for one's own data: say how many there are
            label = f"Training images, at most (this dataset has {n_train} to train on)"
        return {
            **{self.settings[name]: v for name, v in (values or {}).items()},
            self.preset_why: why,
            self.planned: planned_for(preset, dataset, zip_file),
            self.settings["train_images"]: gr.update(label=label),
        }  # numbers only: no user text

    # -- a run: start it, show its settings, stream it ---------------------------------------------------

    def _wire_train(self, outs: list[Component]) -> None:
        by_name: dict[str, Block] = {**self.settings}  # gradio's inputs_kwargs is typed dict[str, Block]
        started = self.train_btn.click(
            self.start,
            [self.token, self.dataset, self.zip_file, self.preset, self.planned],
            [self.run_id, self.status],
            inputs_kwargs=by_name,  # /train's parameters after preset, by name, in SETTINGS order
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

    @staticmethod
    def ready() -> Update:
        """The page has its session: Train may be pressed."""
        return gr.update(interactive=True)

    @user_errors
    def start(
        self,
        token: str,
        dataset: str,
        zip_file: str | None,
        preset: str,
        planned: Any = None,  # the page's plan_key (gr.State: never an API parameter)
        request: gr.Request | None = None,
        encoder_weights: Any = None,  # named, with its default, so the API may leave out the one file setting
        # the Train settings by name (SETTINGS), untyped: build_config answers any value with a sentence (a type
        # hint would make Gradio refuse a wrong type with a generic error instead)
        **settings: Any,
    ) -> tuple[str, str]:
        """Start a run for this browser; returns its run id (refused while one is queued or running)."""
        owner = self.ctx.owner(token)
        if planned is not None and planned != planned_for(preset, dataset, zip_file):
            # pressed while the page's plan was still being made: every setting still showing the page's opening
            # value takes the plan's, as the page will show; one the student changed by hand stays theirs
            with speedups.probes_charged_to(lambda: self.ctx.probes.hit(client_of(request))):
                values, _, _ = self.plans.get(preset, dataset, zip_file, settings.get("train_images"))
            opening = preset_values()
            for name, v in (values or {}).items():
                if same_value(settings.get(name), opening.get(name)):
                    settings[name] = v
        cfg = build_config(preset, dataset, encoder_weights=encoder_weights, **settings)
        refuse_a_second_run(self.ctx.jobs, owner)
        data_file = None
        if dataset == "zip":
            if not zip_file:
                raise gr.Error("Upload a .zip of your dataset first (a folder with images/ and masks/).")
            if not str(zip_file).lower().endswith(".zip"):
                raise gr.Error("The dataset must be a .zip file of a folder with images/ and masks/.")
            cfg.data.source = data_file = zip_file
        num_classes = 4 if dataset == "builtin" else None
        if dataset in ("zip", "oxford-pet"):
            report, _, _, _ = checked_data(self.ctx, cfg)
            if not report.ok:
                raise user_error(
                    "This data cannot be used yet: " + public(report.problems[0]) + " Fix it and choose the data again."
                )
            num_classes = len(report.class_names) or None
        job = self.ctx.jobs.submit(owner, cfg, data_file=data_file, client=client_of(request), num_classes=num_classes)
        pos = self.ctx.jobs.queue_position(job)
        return job.id, ("Waiting in line…" if pos > 1 else "Starting…")

    @user_errors
    def run_settings(self, token: str, run_id: str) -> list[Any]:
        """The settings of the run just started, for the page's widgets (they may be a plan the page had not
        shown yet)."""
        job = self.ctx.jobs.get(self.ctx.owner(token), run_id)
        values = preset_values(job.config)
        return [values[n] for n in RUN_SHOWN]

    @user_errors
    async def watch(self, token: str, run_id: str, request: gr.Request | None = None) -> AsyncIterator[list[Any]]:
        """Stream a run's progress (status, curves, per-class IoU, filmstrip, checkpoint, confusion matrix, worst
        images) until it ends."""
        owner = self.ctx.owner(token)
        job = self.ctx.jobs.get(owner, run_id) if run_id else self.ctx.jobs.latest_for(owner)
        if job is None:
            raise gr.Error("There is no run to watch yet; press Train.")
        with self.ctx.streams.hold(job.owner_key, client_of(request)):
            async for out in stream_run(self.ctx, owner, job, len(self.watch_outputs)):
                yield out

    async def reattach(self, token: str, request: gr.Request | None = None) -> AsyncIterator[list[Any]]:
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
            async for out in stream_run(self.ctx, owner, job, len(self.watch_outputs), once=True):
                yield [job.id, *out]
            return
        try:
            with held:
                async for out in stream_run(self.ctx, owner, job, len(self.watch_outputs)):
                    yield [job.id, *out]
        except Exception:  # a page load must never show an error box
            log.exception("reattaching to a run failed")
            return

    def _wire_stop(self) -> None:
        self.stop_btn.click(
            self.stop,
            [self.token, self.run_id],
            self.status,
            api_name="stop",
            concurrency_limit=None,
            show_progress="hidden",
        )

    @user_errors
    def stop(self, token: str, run_id: str | None) -> str:
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

    # -- downloads and checks ---------------------------------------------------------------------------

    def _wire_export(self) -> None:
        self.export_btn.click(
            self.export_onnx,
            [self.token, self.run_id],
            self.export_file,
            api_visibility="private",
            concurrency_id=HEAVY,
        )

    @user_errors
    def export_onnx(self, token: str, run_id: str) -> Update:
        job = self.ctx.jobs.get(self.ctx.owner(token), run_id)
        if job.best_checkpoint is None:
            raise gr.Error("This run has no checkpoint yet: one is saved when its first epoch ends.")
        when = time.strftime("%Y%m%d-%H%M", time.localtime(job.created))  # as the checkpoint download is named
        return gr.update(value=str(export_onnx_zip(self.ctx, Path(job.best_checkpoint), f"run-{when}")), visible=True)

    def _wire_weights(self) -> None:
        self.encoder_weights.upload(
            self.check_weights,
            self.encoder_weights,
            self.encoder_weights,
            api_visibility="private",
            concurrency_id=HEAVY,
        )

    def check_weights(self, path: str | None) -> Update | None:
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

    def _wire_gif(self) -> None:
        self.gif_btn.click(
            self.filmstrip_gif, [self.token, self.run_id], self.gif_file, api_name="filmstrip_gif", concurrency_id=HEAVY
        )

    @user_errors
    def filmstrip_gif(self, token: str, run_id: str) -> Update:
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

    def _wire_run_info(self) -> None:
        gr.api(self.run_info, api_name="run_info", concurrency_limit=None)

    @user_errors
    def run_info(self, token: str, run_id: str = "") -> dict:
        """A run as JSON: status, queue position, message, classes, one record per finished epoch and, for the
        newest epoch, where it fails (the confusion matrix and the worst validation images by name and mIoU)."""
        owner = self.ctx.owner(token)
        job = self.ctx.jobs.get(owner, run_id) if run_id else self.ctx.jobs.latest_for(owner)
        if job is None:
            raise gr.Error("This browser session has no runs yet; press Train.")
        jobs = self.ctx.jobs
        return run_record(job, jobs.queue_position(job), jobs.expected_wait_s(job) if job.status == QUEUED else 0.0)
