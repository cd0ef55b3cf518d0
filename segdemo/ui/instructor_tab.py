"""The Instructor tab: the whole class at a glance, for whoever holds the instructor key.

The operator sets SEGDEMO_INSTRUCTOR_KEY (an environment variable, or a secret on a Space); the instructor
types it into a password box, so it is never in a URL a student could see. Every handler checks it in
constant time; wrong keys are counted per address (WRONG_KEYS_PER_10_MIN) and answered with one sentence
that tells nothing about the class. Without the key set, the tab says how to turn it on and does nothing.

What the key sees: every run (waiting, training, finished, failed) by a short alias of its browser (never a
token), its curve and per-class IoU, a leaderboard on a held-back split (runs on the built-in data are scored
on HELD_BACK images no run trains or validates on; other runs show their own validation score, marked so),
the queue with expected waits. What it can do: stop a run, move a waiting run to the front, keep the class's
runs and labelled sets longer, and trust the room's address (the instructor's own, behind the same router)
with larger per-address limits.
"""

from __future__ import annotations

import hmac
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd

from segdemo.events import EpochEnd, kept_epoch, stands_on
from segdemo.server.jobs import ACTIVE, QUEUED, RUNNING, Job
from segdemo.server.limits import LimitError, RateLimiter
from segdemo.ui.context import AppContext, client_of
from segdemo.ui.errors import user_errors
from segdemo.ui.listeners import Update
from segdemo.ui.words import fmt_duration

if TYPE_CHECKING:
    from segdemo.data.base import ArraySource

WRONG_KEYS_PER_10_MIN = 10
HELD_BACK = 48  # built-in images for the leaderboard
HELD_BACK_SEED = 999_983  # far from the seeds runs draw their train (2s+1) and val (2s+2) images from
RUN_COLUMNS = ["run", "status", "epochs", "kept epoch's val mIoU", "held-back mIoU", "wait / time", "data"]
NO_KEY = "That is not the instructor key."


def alias(job: Job) -> str:
    """A run's name in this view: its browser's hash, shortened (students' tokens never leave the server)."""
    return f"browser {job.owner_key[:6]} · run {job.id[:4]}"


class InstructorTab:
    def __init__(self, ctx: AppContext, label_store: Any = None) -> None:
        self.ctx, self.label_store = ctx, label_store
        self.key = os.environ.get("SEGDEMO_INSTRUCTOR_KEY") or None
        self.wrong = RateLimiter(WRONG_KEYS_PER_10_MIN, 600, "wrong instructor keys")
        self._scores: dict[tuple, float | None] = {}  # (checkpoint, mtime) -> held-back mIoU
        self._held_back: ArraySource | None = None  # made on the first score
        self._lock = threading.Lock()
        gr.Markdown(
            "For the person running a workshop: every run of the class, a leaderboard, the queue. Students see "
            "only their own runs; this view needs the instructor key the host set (`SEGDEMO_INSTRUCTOR_KEY`)."
            + ("" if self.key else "\n\n*The instructor view is off on this server: no key is set.*")
        )
        with gr.Row():
            self.key_box = gr.Textbox(
                label="Instructor key", type="password", elem_id="instructor-key", scale=3, max_lines=1
            )
            self.show = gr.Button("Show the class", variant="primary", elem_id="instructor-show", scale=1)
        self.summary = gr.Markdown(elem_id="instructor-summary")
        self.runs = gr.Dataframe(
            headers=RUN_COLUMNS, interactive=False, elem_id="instructor-runs", label="Runs (newest last)"
        )
        self.curves = gr.LinePlot(
            x="epoch", y="val mIoU", color="run", label="Validation mIoU per epoch", elem_id="instructor-curves"
        )
        self.classes = gr.Dataframe(
            interactive=False, elem_id="instructor-classes", label="Per-class IoU, the kept epoch"
        )
        with gr.Row():
            self.pick = gr.Dropdown(
                label="Run", choices=[], elem_id="instructor-pick", scale=3, allow_custom_value=True
            )
            self.stop_btn = gr.Button("Stop it", elem_id="instructor-stop", scale=1)
            self.front_btn = gr.Button("Move it to the front of the line", elem_id="instructor-front", scale=1)
        with gr.Row():
            self.hours = gr.Number(
                24,
                label="Keep the class's runs and labelled sets for (hours)",
                minimum=1,
                maximum=24 * 14,
                precision=0,
                scale=2,
            )
            self.keep_btn = gr.Button("Keep them", elem_id="instructor-keep", scale=1)
            self.trust_btn = gr.Button("Trust this room's address (larger limits)", elem_id="instructor-trust", scale=1)
        self.msg = gr.Markdown(elem_id="instructor-msg")
        self.timer = gr.Timer(5.0, active=False)

    def wire(self) -> None:
        """The tab's listeners, each next to its handler below (in this order: the queue keeps it)."""
        self._wire_overview()
        self._wire_stop()
        self._wire_front()
        self._wire_keep()
        self._wire_trust()

    # -- the key ------------------------------------------------------------------------------------------

    def _check(self, key: Any, request: Any) -> None:
        """gr.Error(NO_KEY) unless `key` is the instructor key; wrong tries are limited per address."""
        addr = client_of(request)
        try:
            self.wrong.check(addr)
        except LimitError as e:
            raise gr.Error(str(e).capitalize() + ".", title="Instructor") from None
        if not (self.key and isinstance(key, str) and hmac.compare_digest(key.encode(), self.key.encode())):
            self.wrong.hit(addr)
            raise gr.Error(NO_KEY, title="Instructor")

    # -- listeners and their handlers -----------------------------------------------------------------------

    def _wire_overview(self) -> None:
        outs = [self.summary, self.runs, self.curves, self.classes, self.pick, self.timer]
        self.show.click(self.overview, self.key_box, outs, api_name="instructor_overview", show_progress="hidden")
        self.timer.tick(self.overview, self.key_box, outs, api_visibility="private", show_progress="hidden")

    @user_errors
    def overview(
        self, key: Any, request: gr.Request | None = None
    ) -> tuple[str, pd.DataFrame, pd.DataFrame | None, pd.DataFrame, Update, gr.Timer]:
        self._check(key, request)
        jobs = self.ctx.jobs.all_jobs()
        rows, curves, classes = [], [], []
        for job in jobs:
            epochs = [e for e in job.events if isinstance(e, EpochEnd)]
            best = kept_epoch(epochs)  # the checkpoint's epoch (on a small split not the highest val mIoU)
            if job.status == QUEUED:
                wait = fmt_duration(self.ctx.jobs.expected_wait_s(job) or 0)
                when = f"waits ~{wait} (#{self.ctx.jobs.queue_position(job)})"
            else:
                when = fmt_duration(sum(e.seconds for e in epochs)) if epochs else ""
            rows.append(
                [
                    alias(job),
                    job.status,
                    f"{epochs[-1].epoch}/{job.config.train.epochs}" if epochs else "0",
                    f"{best.miou:.3f} (epoch {best.epoch}{', ' + stands_on(best) if stands_on(best) else ''})"
                    if best
                    else "",
                    self._held_back_score(job),
                    when,
                    _data_name(job),
                ]
            )
            curves += [{"epoch": e.epoch, "val mIoU": float(e.miou), "run": alias(job)} for e in epochs]
            if best is not None:
                names = _class_names(job)
                classes.append(
                    {
                        "run": alias(job),
                        # None: a class absent from the validation images and never predicted (no IoU)
                        **{
                            n: None if v is None else round(float(v), 3)
                            for n, v in zip(names, best.per_class_iou, strict=False)
                        },
                    }
                )
        running = sum(j.status == RUNNING for j in jobs)
        waiting = sum(j.status == QUEUED for j in jobs)
        summary = (
            f"**{len(jobs)} runs** from {len({j.owner_key for j in jobs})} browsers: {running} training, {waiting} "
            f"waiting, {sum(j.status not in ACTIVE for j in jobs)} ended. {self.ctx.jobs.max_concurrent} training "
            f"slot(s); runs and labelled sets are kept {self.ctx.jobs.ttl_s / 3600:g} h after they end. "
            f"Held-back mIoU: the built-in data's runs scored on {HELD_BACK} images none of them saw; *own val* "
            "marks a run on other data, scored on its own validation split."
        )
        choices = [(alias(j), j.id) for j in reversed(jobs)]
        return (
            summary,
            pd.DataFrame(rows, columns=RUN_COLUMNS),
            pd.DataFrame(curves, columns=["epoch", "val mIoU", "run"]) if curves else None,
            pd.DataFrame(classes),
            gr.update(choices=choices),
            gr.Timer(active=True),
        )

    def _wire_stop(self) -> None:
        self.stop_btn.click(self.stop, [self.key_box, self.pick], self.msg, api_name="instructor_stop")

    @user_errors
    def stop(self, key: Any, run_id: Any, request: gr.Request | None = None) -> str:
        self._check(key, request)
        job = self.ctx.jobs.stop_any(str(run_id or ""))
        return f"Stopped {alias(job)}: it keeps its best checkpoint, and its student sees that it was stopped."

    def _wire_front(self) -> None:
        self.front_btn.click(self.front, [self.key_box, self.pick], self.msg, api_name="instructor_front")

    @user_errors
    def front(self, key: Any, run_id: Any, request: gr.Request | None = None) -> str:
        self._check(key, request)
        job = self.ctx.jobs.prioritise(str(run_id or ""))
        return f"{alias(job)} is now first in line."

    def _wire_keep(self) -> None:
        self.keep_btn.click(self.keep, [self.key_box, self.hours], self.msg, api_name="instructor_keep")

    @user_errors
    def keep(self, key: Any, hours: Any, request: gr.Request | None = None) -> str:
        self._check(key, request)
        try:
            h = float(hours)
        except (TypeError, ValueError):
            raise gr.Error("Give the hours as a number.") from None
        if not 1 <= h <= 24 * 14:
            raise gr.Error("Keep them for 1 hour to 14 days.")
        self.ctx.jobs.extend_retention(h * 3600)
        if self.label_store is not None:
            self.label_store.ttl_s = max(self.label_store.ttl_s, h * 3600)
        return f"Runs and labelled sets are now kept at least {h:g} h after their last change."

    def _wire_trust(self) -> None:
        self.trust_btn.click(self.trust, self.key_box, self.msg, api_name="instructor_trust_room")

    @user_errors
    def trust(self, key: Any, request: gr.Request | None = None) -> str:
        self._check(key, request)
        self.ctx.jobs.trust_address(client_of(request))
        return (
            "This room's address (yours, shared by everyone behind this router) now gets larger limits: "
            f"{self.ctx.jobs.address_cap(client_of(request))} runs waiting or training at once."
        )

    # -- the leaderboard ------------------------------------------------------------------------------------

    def _held_back_score(self, job: Job) -> str:
        ckpt = job.best_checkpoint
        if ckpt is None:
            return ""
        if job.config.data.source != "builtin":
            kept = kept_epoch([e for e in job.events if isinstance(e, EpochEnd)])
            return f"{kept.miou:.3f} (own val)" if kept else ""
        key = (str(ckpt), ckpt.stat().st_mtime_ns)
        with self._lock:
            if key not in self._scores:
                self._scores[key] = self._score(ckpt)
            score = self._scores[key]
        return "" if score is None else f"{score:.3f}"

    def _score(self, ckpt: Path) -> float | None:
        from segdemo.core.checkpoint import CheckpointError, load_checkpoint
        from segdemo.core.evaluate import evaluate_model
        from segdemo.data.builtin import IMAGE_SIZE, make_split

        if self._held_back is None:
            self._held_back = make_split(HELD_BACK, HELD_BACK_SEED, IMAGE_SIZE, "heldback")
        try:
            c = load_checkpoint(ckpt)
        except CheckpointError:
            return None
        return float(evaluate_model(c.model, self._held_back, c.config, c.classes).metrics.miou)


def _data_name(job: Job) -> str:
    src = job.config.data.source
    return "built-in shapes" if src == "builtin" else Path(str(src)).name[:40]


def _class_names(job: Job) -> list[str]:
    from segdemo.events import Started

    s = job.last(Started)
    return list(s.class_names) if s is not None else []
