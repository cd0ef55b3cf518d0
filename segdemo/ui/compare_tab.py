"""Compare tab: this browser's runs side by side (curves overlaid, per-class IoU, the settings that differ
highlighted) and one-click ablations that queue a variant of a run through the same job queue.

Only the runs of this browser's owner token are ever listed or read (jobs.get checks token and run id
together); a variant is submitted like a Train click, under the same limits and the same fair order.

API: `/my_runs` (token) -> this browser's runs; `/compare` (token, run_ids, metric) -> curves, per-class
IoU and settings as JSON; `/ablate` (token, run_id, change) -> the queued variant's run id.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from segdemo.core.config import LITE, RunConfig, quick_cpu_preset, use_encoder
from segdemo.data.sources import source_of
from segdemo.events import EpochEnd, Started, kept_epoch
from segdemo.server.jobs import Job
from segdemo.training.recipes import LITE_WIDTH
from segdemo.ui.context import AppContext, client_of
from segdemo.ui.errors import user_errors
from segdemo.ui.listeners import Update, bump
from segdemo.ui.settings import LOSSES, SETTINGS, UPSAMPLING
from segdemo.ui.words import esc, fmt_num

QUIET: dict[str, Any] = dict(api_visibility="private", show_progress="hidden")  # the page's own listeners
MAX_COMPARED = 8  # runs in one comparison: more than a browser keeps (jobs.max_runs_per_owner), far fewer than a flood
METRICS = {"val mIoU": "miou", "val loss": "val_loss", "train loss": "train_loss"}  # plot choice -> EpochEnd field
DIFFERS_STYLE = "background:#fff1b8;color:#1f1f1f;font-weight:600"  # readable in light and dark themes alike
INTRO = (
    "Pick two or more of **your runs** (only this browser's are listed) to see their validation curves on one "
    "plot, their per-class IoU side by side, and the settings that differ, highlighted. Then change one thing "
    "and train again: the buttons below queue a copy of a run with a single setting changed, as a new run of "
    "yours. It waits for a free slot like any run and appears here when its first epoch is done."
)


# -- one-click ablations: a run with one setting changed ---------------------------------------------------


def _short(options: list[tuple[str, str]], value: str) -> str:
    """A setting's value as the page names it, without the explanation: 'CE + Dice', 'Bilinear + convolution'."""
    for label, v in options:
        if v == value:
            return label.split(":")[0].split(" (")[0].strip()
    return str(value)


@dataclass(frozen=True)
class Ablation:
    """One change to a run's config (its /ablate name), and how the button says it for a given run."""

    name: str
    label: Callable[[RunConfig], str]  # "Dice instead of CE + Dice" for the run it would change
    apply: Callable[[RunConfig], None]


def _set(section: str, field: str, value_of: Callable[[RunConfig], Any]) -> Callable[[RunConfig], None]:
    def apply(cfg: RunConfig) -> None:
        setattr(getattr(cfg, section), field, value_of(cfg))

    return apply


def _swap_encoder(cfg: RunConfig) -> None:
    """A pretrained run goes to the tutorial U-Net from random weights; a run from scratch gets the ImageNet
    EfficientNet-Lite0 encoder (with a decoder at least 16 wide, as the presets give it)."""
    if cfg.model.pretrained:
        use_encoder(cfg, "unet", pretrained=False)
        cfg.model.encoder_weights = None
    else:
        use_encoder(cfg, LITE)
        cfg.model.width = max(cfg.model.width, LITE_WIDTH)


ABLATIONS = {
    a.name: a
    for a in (
        Ablation(
            "loss",  # Dice against whatever the run used; a Dice run gets plain cross-entropy instead
            lambda c: (
                "CE instead of Dice" if c.train.loss == "dice" else f"Dice instead of {_short(LOSSES, c.train.loss)}"
            ),
            _set("train", "loss", lambda c: "ce" if c.train.loss == "dice" else "dice"),
        ),
        Ablation(
            "augment",
            lambda c: "no augmentation" if c.data.augment else "with augmentation",
            _set("data", "augment", lambda c: not c.data.augment),
        ),
        Ablation(
            "encoder",  # transfer learning's own experiment: the same run with and without ImageNet's features
            lambda c: (
                "the tutorial U-Net from scratch instead of the ImageNet encoder"
                if c.model.pretrained
                else "the ImageNet encoder (EfficientNet-Lite0) instead of from scratch"
            ),
            _swap_encoder,
        ),
        Ablation(
            "upsampling",
            lambda c: "transposed up-sampling" if c.model.upsampling == "bilinear" else "bilinear up-sampling",
            _set("model", "upsampling", lambda c: "transposed" if c.model.upsampling == "bilinear" else "bilinear"),
        ),
    )
}


def variant_of(cfg: RunConfig, change: str) -> RunConfig:
    """A copy of a run's config with one ablation applied (the original is left as it was)."""
    out = copy.deepcopy(cfg)
    ABLATIONS[change].apply(out)
    return out


# -- what a comparison shows -----------------------------------------------------------------------------


def _dataset(cfg: RunConfig) -> str:
    src = source_of(cfg.data)
    return src.describe(cfg.data) if src else Path(cfg.data.source).name  # never a server path


def settings_of(cfg: RunConfig) -> dict[str, str]:
    """A run's settings as the page shows them, label -> text: the dataset, then the Train tab's SETTINGS."""
    out = {"Dataset": _dataset(cfg)}
    for s in SETTINGS:
        v = s.get(cfg)
        if s.name == "loss":
            v = _short(LOSSES, v)
        elif s.name == "upsampling":
            v = _short(UPSAMPLING, v)
        elif s.name == "augment":
            v = "on" if v else "off"
        elif s.name == "learning_rate":
            v = f"{v:g}"
        elif s.name == "encoder_weights":  # the page's upload is not a value: say which file, by name only
            v = Path(cfg.model.encoder_weights).name.removeprefix("encoder-") if cfg.model.encoder_weights else "none"
        elif s.name == "train_images" and cfg.data.source != "builtin":
            v = cfg.data.train_images or "all"
        out[s.title] = str(v)
    if cfg.data.source == "builtin":
        out["Validation images"] = str(cfg.data.builtin_val)
    out["Encoder"] = cfg.model.encoder
    out["Seed"] = str(cfg.train.seed)
    return out


@dataclass
class RunSummary:
    """What a comparison needs of one run: its name, settings and finished epochs."""

    id: str
    name: str
    status: str
    config: RunConfig
    classes: list[str]
    epochs: list[EpochEnd]

    @property
    def best(self) -> EpochEnd | None:
        return kept_epoch(self.epochs)

    def label(self) -> str:
        b = self.best
        s = settings_of(self.config)
        best = f"kept epoch {b.epoch}, val mIoU {b.miou:.3f}" if b else "no epoch yet"
        return (
            f"{self.name} · {self.status} · {best} · {len(self.epochs)}/{self.config.train.epochs} epochs · "
            f"{s['Loss']}, augmentation {s['Augmentation']}, {s['Up-sampling'].split()[0].lower()}"
        )

    def as_json(self) -> dict[str, Any]:
        b = self.best
        return {
            "run_id": self.id,
            "name": self.name,
            "status": self.status,
            "epochs_done": len(self.epochs),
            "best_miou": b.miou if b else None,
            "best_epoch": b.epoch if b else None,
            "settings": settings_of(self.config),
        }


def summarise(jobs: list[Job]) -> list[RunSummary]:
    """Runs (oldest first) named by the time they were started: "run 14:02:31" (a suffix if two share a second)."""
    out: list[RunSummary] = []
    seen: dict[str, int] = {}  # runs per name so far
    for job in jobs:
        name = "run " + time.strftime("%H:%M:%S", time.localtime(job.created))
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name += f" ({seen[name]})"
        started = job.last(Started)
        epochs = [e for e in list(job.events) if isinstance(e, EpochEnd)]
        classes = list(started.class_names) if started else []
        out.append(RunSummary(job.id, name, job.status, job.config, classes, epochs))
    return out


def curves_frame(runs: list[RunSummary], metric: str) -> pd.DataFrame:
    """Long format for one gr.LinePlot coloured by run: epoch, value, run."""
    field = METRICS[metric]
    rows = [{"epoch": e.epoch, "value": float(getattr(e, field)), "run": r.name} for r in runs for e in r.epochs]
    return pd.DataFrame(rows, columns=["epoch", "value", "run"])


def per_class_frame(runs: list[RunSummary]) -> pd.DataFrame:
    """A row per class (every class any run has, in order), a column per run: IoU at that run's kept epoch."""
    names: list[str] = []
    for r in runs:
        names += [n for n in r.classes if n not in names]
    cols = ["class", *(f"{r.name} (epoch {r.best.epoch})" if r.best else r.name for r in runs)]
    rows = []
    for n in names:
        row = [n]
        for r in runs:
            iou = r.best.per_class_iou[r.classes.index(n)] if r.best and n in r.classes else None
            row.append(fmt_num(iou, 3) if r.best and n in r.classes else "-")
        rows.append(row)
    rows.append(["mean (mIoU)", *(fmt_num(r.best.miou, 3) if r.best else "-" for r in runs)])
    return pd.DataFrame(rows, columns=cols)


def settings_rows(runs: list[RunSummary]) -> list[tuple[str, list[str], bool]]:
    """(setting, value per run, whether they differ), in the Train tab's order."""
    per_run = [settings_of(r.config) for r in runs]
    labels: list[str] = []
    for s in per_run:
        labels += [k for k in s if k not in labels]
    rows = []
    for label in labels:
        values = [s.get(label, "-") for s in per_run]
        rows.append((label, values, len(set(values)) > 1))
    return rows


def settings_html(runs: list[RunSummary]) -> str:
    """The settings as an HTML table, the rows that differ highlighted and listed above it (all text escaped)."""
    rows = settings_rows(runs)
    differ = [label for label, _, d in rows if d]
    if len(runs) < 2:
        summary = "Pick a second run to see which settings differ."
    elif differ:
        summary = "Settings that differ: " + ", ".join(f"<b>{esc(d)}</b>" for d in differ)
    else:
        summary = "These runs have the same settings: their differences come from chance alone."
    head = "".join(f"<th>{esc(r.name)}</th>" for r in runs)
    body = []
    for label, values, d in rows:
        style = f' class="differs" style="{DIFFERS_STYLE}"' if d else ""
        mark = "≠ " if d else ""
        cells = "".join(f"<td>{esc(v)}</td>" for v in values)
        body.append(f"<tr{style}><td>{mark}{esc(label)}</td>{cells}</tr>")
    return (
        f'<div id="compare-differs" style="margin-bottom:6px">{summary}</div>'
        '<table class="segdemo-compare" style="width:100%;border-collapse:collapse">'
        f"<thead><tr><th>setting</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def x_limits(runs: list[RunSummary]) -> list[float]:
    """The epoch axis from 1 to the longest run's planned epochs; at least 5 wide, or Vega's ticks go fractional."""
    return [1, max(5, *(r.config.train.epochs for r in runs))] if runs else [1, 5]


# -- the tab ------------------------------------------------------------------------------------------


class CompareTab:
    """Builds the tab's widgets (inside an open gr.Tab) and wires its events."""

    def __init__(self, ctx: AppContext, token: gr.BrowserState) -> None:
        self.ctx, self.token = ctx, token
        gr.Markdown(INTRO)
        with gr.Row(equal_height=False):
            self.runs = gr.CheckboxGroup(
                [], label="Your runs", elem_id="compare-runs", scale=4, info="Newest last. Pick two or more."
            )
            with gr.Column(scale=1, min_width=200):
                self.metric = gr.Radio(list(METRICS), value="val mIoU", label="Plot", elem_id="compare-metric")
                self.refresh_btn = gr.Button("Refresh the list", size="sm", elem_id="compare-refresh")
        self.known = gr.State([])  # run ids the list has shown, so a new run can be ticked by itself
        self.listed = gr.State(0)  # counts refreshes of the list: a change redraws the comparison
        self.note = gr.Markdown("Train a run (or two) first; they are listed here.", elem_id="compare-note")
        self.curves = gr.LinePlot(
            x="epoch",
            y="value",
            color="run",
            x_title="epoch",
            y_title="val mIoU",
            color_title="run",
            x_axis_format="d",
            x_lim=[1, 5],
            height=320,
            title="Validation curves of the chosen runs",  # in the chart: a label above it cuts the legend off
            label="Curves of the chosen runs",
            show_label=False,
            elem_id="compare-curves",
        )
        with gr.Row(equal_height=False):
            self.table = gr.Dataframe(
                value=pd.DataFrame(columns=["class"]),
                label="Per-class IoU at each run's kept epoch",
                interactive=False,
                wrap=True,
                elem_id="compare-iou",
            )
            with gr.Column():
                gr.Markdown("**Settings** (the ones that differ are highlighted)")
                self.settings = gr.HTML(elem_id="compare-settings")
        gr.Markdown("### Change one thing and train again")
        with gr.Row(equal_height=False):
            self.base = gr.Dropdown([], label="Run to change", elem_id="ablate-base", scale=2)
            with gr.Column(scale=3):
                preset = quick_cpu_preset()  # until there is a run, the buttons say what they would do to the default
                self.ablate_btns = {
                    a.name: gr.Button(
                        f"Same run, {a.label(preset)}", size="sm", elem_id=f"ablate-{a.name}", interactive=False
                    )
                    for a in ABLATIONS.values()
                }
        self.ablate_status = gr.Markdown(elem_id="ablate-status")

    # -- wiring -----------------------------------------------------------------------------------------

    def wire(self, demo: gr.Blocks, tab: gr.Tab, train: Any, predict_model: gr.Dropdown) -> None:
        """`train` is the TrainTab: a queued variant streams there like a Train click, then shows up here. The
        listeners, each group next to its handlers below (in this order: the queue keeps it)."""
        # one dict each, used by several listeners: one function, so one concurrency group, as before
        refresh, relisted = self._refresh_args(), bump(self.listed, show_progress="hidden")
        self._wire_show()
        self._wire_refresh(tab, refresh, relisted)
        self._wire_labels()
        self._wire_ablations(train, predict_model, refresh, relisted)
        self._wire_api()

    # -- the comparison on the page ------------------------------------------------------------------------

    def _wire_show(self) -> None:
        # one listener draws the comparison, deferring a newer tick while it runs (always_last): a refresh bumps
        # `listed` rather than drawing by itself, so a drawing from before a tick can never land after it
        gr.on(
            [self.runs.input, self.metric.input, self.listed.change],
            self.show,
            [self.token, self.runs, self.metric],
            [self.note, self.curves, self.table, self.settings],
            **QUIET,
            trigger_mode="always_last",
        )

    @user_errors
    def show(self, token: str, run_ids: list | None, metric: str) -> tuple[str, Update | None, pd.DataFrame, str]:
        """The comparison of the ticked runs, for the page."""
        owner = self.ctx.owner(token)
        mine = {j.id for j in self.ctx.jobs.jobs_for(owner)}
        # a ticked run may have expired (or made room for a newer one) since the list was drawn: leave it out
        runs = self._chosen(owner, [i for i in run_ids or [] if i in mine])
        if not runs:  # no data at all (not an empty frame), so the next runs' plot is drawn afresh
            return "Tick two or more runs above.", None, pd.DataFrame(columns=["class"]), ""
        note = "" if len(runs) > 1 else "Tick a second run to compare it with this one."
        metric = metric if metric in METRICS else "val mIoU"
        plot = gr.update(
            value=curves_frame(runs, metric),
            y_title=metric,
            x_lim=x_limits(runs),
            y_lim=[0, 1] if metric == "val mIoU" else [0, None],
            # Gradio 6.31 redraws a plot's colours and legend only when a setting changes, not its data alone:
            # naming the runs here is that setting, so a newly ticked run gets its colour and legend entry
            colors_in_legend=[r.name for r in runs],
        )
        return note, plot, per_class_frame(runs), settings_html(runs)

    # -- the list of runs ------------------------------------------------------------------------------------

    def _refresh_args(self) -> dict[str, Any]:
        listed = [self.runs, self.known, self.base, *self.ablate_btns.values()]
        return dict(fn=self.refresh, inputs=[self.token, self.runs, self.known, self.base], outputs=listed, **QUIET)

    def _wire_refresh(self, tab: gr.Tab, refresh: dict[str, Any], relisted: dict[str, Any]) -> None:
        gr.on([tab.select, self.refresh_btn.click], **refresh).then(**relisted)

    def refresh(
        self, token: str, chosen: list | None, known: list | None, base_id: str | None
    ) -> list[Update | list[str]]:
        """List this browser's runs: keep what was ticked, tick runs the list has not shown before; keep the run
        to change, else offer the newest finished one."""
        if not self.ctx.jobs.valid_owner_token(token):
            return [gr.skip()] * (3 + len(self.ablate_btns))
        runs = self._listed(token)
        ids = [r.id for r in runs]
        shown_before = set(known or [])
        ticked = [i for i in ids if i in (chosen or []) or i not in shown_before]
        finished = [r for r in runs if r.status not in ("queued", "running")]
        base = next((r for r in finished if r.id == base_id), finished[-1] if finished else None)
        return [
            gr.update(choices=[(r.label(), r.id) for r in runs], value=ticked),
            ids,
            gr.update(choices=[(r.label(), r.id) for r in finished], value=base.id if base else None),
            *self._labels(base),
        ]

    def _labels(self, base: RunSummary | None) -> list[Update]:
        cfg = base.config if base else quick_cpu_preset()
        return [gr.update(value=f"Same run, {a.label(cfg)}", interactive=base is not None) for a in ABLATIONS.values()]

    def _wire_labels(self) -> None:
        self.base.input(self.button_labels, [self.token, self.base], list(self.ablate_btns.values()), **QUIET)

    def button_labels(self, token: str, run_id: str | None) -> list[Update]:
        """The ablation buttons say what they would change in the chosen run ("Dice instead of CE + Dice")."""
        if not self.ctx.jobs.valid_owner_token(token) or not isinstance(run_id, str) or not run_id:
            return self._labels(None)
        by_id = {r.id: r for r in summarise(self.ctx.jobs.jobs_for(token))}
        return self._labels(by_id.get(run_id))

    # -- the API: this browser's runs, a comparison as JSON, an ablation ------------------------------------

    def _wire_api(self) -> None:
        gr.api(self.my_runs, api_name="my_runs", concurrency_limit=None)
        gr.api(self.compare, api_name="compare", concurrency_limit=None)
        gr.api(self.ablate, api_name="ablate", concurrency_limit=4, concurrency_id="train")

    @user_errors
    def my_runs(self, token: str) -> list[dict]:
        """This browser's runs that have at least one finished epoch, oldest first."""
        return [r.as_json() for r in self._listed(self.ctx.owner(token))]

    @user_errors
    def compare(self, token: str, run_ids: list[str], metric: str = "val mIoU") -> dict:
        """Runs side by side: each run's curve of `metric` (val mIoU, val loss or train loss), per-class IoU
        at its kept epoch, and its settings with the ones that differ flagged."""
        owner = self.ctx.owner(token)
        if metric not in METRICS:
            raise gr.Error(f"Choose the metric from: {', '.join(METRICS)}.")
        runs = self._chosen(owner, run_ids)
        if not runs:
            raise gr.Error("Choose at least one run (its id from /my_runs).")
        table = per_class_frame(runs)
        return {
            "runs": [r.as_json() for r in runs],
            "metric": metric,
            "curves": curves_frame(runs, metric).to_dict(orient="records"),
            "per_class_iou": {"headers": list(table.columns), "data": table.values.tolist()},
            "settings": [{"setting": s, "values": v, "differs": d} for s, v, d in settings_rows(runs)],
            "differ": [s for s, _, d in settings_rows(runs) if d],
        }

    # -- reading this browser's runs ---------------------------------------------------------------------

    def _listed(self, owner: str) -> list[RunSummary]:
        """This owner's runs that have finished an epoch (a run without one has nothing to compare)."""
        return [r for r in summarise(self.ctx.jobs.jobs_for(owner)) if r.epochs]

    def _chosen(self, owner: str, run_ids: Any) -> list[RunSummary]:
        """The owner's runs with these ids, in the order given; the same 'no such run' for a wrong id and for
        another browser's, so nobody learns that another's run exists."""
        if not isinstance(run_ids, list | tuple) or not all(isinstance(i, str) for i in run_ids):
            raise gr.Error("Send run_ids as a list of run ids (from /my_runs).")
        if len(run_ids) > MAX_COMPARED:
            raise gr.Error(f"Compare at most {MAX_COMPARED} runs at once.")
        ids = list(dict.fromkeys(run_ids))
        for i in ids:
            self.ctx.jobs.get(owner, i)  # JobError (no such run) unless it is this owner's
        by_id = {r.id: r for r in summarise(self.ctx.jobs.jobs_for(owner))}  # named among all of the owner's runs
        return [by_id[i] for i in ids if i in by_id]

    # -- ablations ------------------------------------------------------------------------------------------

    def _wire_ablations(
        self, train: Any, predict_model: gr.Dropdown, refresh: dict[str, Any], relisted: dict[str, Any]
    ) -> None:
        for name, btn in self.ablate_btns.items():
            btn.click(
                self._ablate_button(name),
                [self.token, self.base],
                [train.run_id, self.ablate_status],
                concurrency_limit=4,  # the Train button's group and limit: a variant is a Train click
                concurrency_id="train",
                **QUIET,
            ).success(
                train.watch,
                [self.token, train.run_id],
                [*train.watch_outputs, predict_model],
                concurrency_limit=None,
                **QUIET,
            ).then(**refresh).then(**relisted).then(
                lambda: "The variant's run has ended: it is ticked above (its details are in the Train tab).",
                None,
                self.ablate_status,
                **QUIET,
            )

    @user_errors
    def ablate(self, token: str, run_id: str, change: str, request: gr.Request | None = None) -> dict:
        """Queue a copy of one of this browser's finished runs with one setting changed (`change`: loss, augment
        upsampling or encoder) as a new run, under the same limits as Train. Returns its run id."""
        owner = self.ctx.owner(token)
        if not isinstance(change, str) or change not in ABLATIONS:
            raise gr.Error(f"Choose the change from: {', '.join(ABLATIONS)}.")
        if not isinstance(run_id, str) or not run_id:
            raise gr.Error("Choose the run to change first.")
        base = self.ctx.jobs.get(owner, run_id)
        if base.is_active:
            raise gr.Error("That run is still training: change one thing once it has finished.")
        cfg = variant_of(base.config, change)
        src = Path(cfg.data.source)
        # an uploaded dataset lives in the base run's folder: the variant gets its own copy (submit copies it)
        data_file = src if src.is_file() and src.resolve().is_relative_to(base.run_dir.resolve()) else None
        started = base.last(Started)
        job = self.ctx.jobs.submit(
            owner,
            cfg,
            data_file=data_file,
            client=client_of(request),
            num_classes=len(started.class_names) if started else None,
        )
        what = ABLATIONS[change].label(base.config)
        name = summarise([base])[0].name
        pos = self.ctx.jobs.queue_position(job)
        return {
            "run_id": job.id,
            "message": f"Queued: {name} with {what}. "
            + ("It is waiting for a free slot. " if pos > 1 else "It is starting. ")
            + "Watch it in the Train tab; it appears here when its first epoch is done.",
        }

    def _ablate_button(self, change: str) -> Callable[..., tuple[str, str]]:
        """The page's handler for one ablation button: (the new run id for the Train tab, a message)."""

        def click(token: str, run_id: str | None, request: gr.Request | None = None) -> tuple[str, str]:
            out = self.ablate(token, run_id or "", change, request)  # ablate says to choose one
            return out["run_id"], out["message"]

        return click
