"""A run's live view for the Train tab: its outputs (status, curves, per-class table, filmstrip, checkpoint,
confusion, worst images, the Predict tab's model list) as the run's events arrive, sent only when they change."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import gradio as gr
import pandas as pd

from segdemo.server.jobs import QUEUED, Job
from segdemo.ui.context import AppContext
from segdemo.ui.listeners import Update
from segdemo.ui.models import model_choices
from segdemo.ui.run_view import Curves, RunView

TABLE_COLUMNS = ["class", "IoU, latest epoch", "IoU at the kept epoch"]
CURVE_COLUMNS = ["epoch", "value", "curve"]
CURVE_COLORS = {"train loss": "#1f77b4", "val loss": "#ff7f0e", "val mIoU": "#2ca02c"}  # matplotlib's, as curves.png
STREAM_IDLE_S = 600  # a live view ends when its run has sent nothing new for this long (reload to reattach)


async def stream_run(
    ctx: AppContext, owner: str, job: Job, n_outputs: int, once: bool = False
) -> AsyncIterator[list[Any]]:
    """Yield the page's view of a run as it changes, until the run ends, it has been idle STREAM_IDLE_S
    (the page says to reload), or at once after the first view with `once`. Each view is the tab's `n_outputs` watch
    outputs and then the Predict tab's model list (a status-only view: the status and n_outputs skips)."""
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
        jobs = ctx.jobs
        wait = jobs.expected_wait_s(job) if job.status == QUEUED else None
        status = view.status(job, jobs.queue_position(job), jobs.running_count(), wait)
        now = time.monotonic()
        if first or changed or over:
            ckpt, choices = gr.skip(), gr.skip()
            if first:
                ckpt = None
            if over and not finished_once:
                finished_once = True
                ckpt = checkpoint_copy(ctx, job)
                value = f"run:{job.id}" if job.best_checkpoint is not None else gr.skip()
                choices = gr.update(choices=model_choices(ctx, owner), value=value)
            film = gr.skip() if not first and view.previews_from is film_sent else view.filmstrip()
            film_sent = view.previews_from
            fresh = first or view.diagnosis_from is not diagnosis_sent
            confusion, worst = (view.confusion(), view.worst()) if fresh else (gr.skip(), gr.skip())
            diagnosis_sent = view.diagnosis_from
            yield [status, plot(view.curves()), table_frame(view.table()), film, ckpt, confusion, worst, choices]
            first, last_status = False, now
        elif now - last_status >= 1.0 and (new or job.status == QUEUED):
            yield [status, *[gr.skip()] * n_outputs]
            last_status = now
        if over or once:
            return
        if now - last_new > STREAM_IDLE_S and job.status != QUEUED:
            yield [
                status + "\n\n*This live view paused (nothing new for a while). Reload the page to see the latest.*",
                *[gr.skip()] * n_outputs,
            ]
            return
        await asyncio.sleep(0.25)


def checkpoint_copy(ctx: AppContext, job: Job) -> str | None:
    """The best checkpoint, copied where Gradio can serve it (run folders never are), until the run expires."""
    best = job.best_checkpoint
    if best is None:
        return None
    when = time.strftime("%Y%m%d-%H%M", time.localtime(job.created))
    return ctx.download_copy(job, best, f"segdemo-run-{when}-best.safetensors")


def plot(curves: Curves | None) -> Update | None:
    """The curves for the page's gr.LinePlot, which draws them in the browser. None until the first epoch: Gradio
    6.31 builds the chart (column types, colours, legend) when a plot gets data after having none, and afterwards
    only swaps the data, so it must first see real columns."""
    if curves is None:
        return None
    frame = pd.DataFrame(curves.rows, columns=CURVE_COLUMNS)
    return gr.update(value=frame, x_lim=curves.x_lim, caption=curves.caption)


def table_frame(table: tuple[list[str], list[list[str]]] | None) -> pd.DataFrame:
    if table is None:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    columns, rows = table
    return pd.DataFrame(rows, columns=columns)
