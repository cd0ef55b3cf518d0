"""What the Train tab shows of one run, folded from its events: the status line, the curves, the per-class table,
the filmstrip, the confusion matrix and the worst images. Plain Python and numpy (no gradio), so it is tested
on its own (tests/test_run_view.py); the tab turns its values into components."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from segdemo.core.config import RunConfig
from segdemo.core.losses import LOSSES
from segdemo.core.metrics import confusion_to_dict
from segdemo.core.viz import colorize, confusion_html, error_map
from segdemo.data.base import IGNORE, ClassSet
from segdemo.events import Done, EpochEnd, Failed, Progress, Started, kept_epoch, stands_on
from segdemo.server.jobs import DONE, FAILED, QUEUED, RUNNING, STOPPED, Job
from segdemo.training.recipes import LITE, choose_encoder
from segdemo.ui.pictures import strip, upscale
from segdemo.ui.words import fmt_duration, fmt_num, md, public, tidy_paths

CURVES = ("train loss", "val loss", "val mIoU")
Picture = tuple[np.ndarray, str]  # a gallery item: the picture and its caption


@dataclass
class Curves:
    """The curves for a line plot drawn in the browser: one row per epoch and curve (epoch, value, curve)."""

    rows: list[dict[str, Any]]
    x_lim: list[int]  # the whole run from the start, at least 5 wide (or Vega's ticks go fractional)
    caption: str | None  # after one epoch, the numbers: one point per curve draws no line


FINE_TUNE_NEXT = (
    "\n\n➜ **Next: fine-tune.** Instant mode trained only the decoder, the ImageNet encoder frozen. For a better "
    "model of the same photos, choose the preset **About a minute** under *2. Settings* and press Train again: "
    "it fine-tunes the whole network (on 6 labelled pet photos a 7th photo's mIoU went from about 0.6 to about 0.9)."
)


def run_line(cfg: RunConfig) -> str:
    """The settings a run started with, in one Markdown line (numbers and fixed labels only)."""
    losses = {loss_id: label.split(":")[0] for label, loss_id in LOSSES.choices("train")}
    loss = losses.get(cfg.train.loss, cfg.train.loss)
    n = cfg.train.epochs
    budget = f"time budget {cfg.train.time_budget_s / 60:g} min" if cfg.train.time_budget_s else "no time limit"
    return (
        f"\n\n**This run's settings**: up to {n} epoch{'s' if n != 1 else ''} · {budget} · {cfg.data.image_size} px · "
        f"batch {cfg.train.batch_size} · width {cfg.model.width}, depth {cfg.model.depth} · "
        f"learning rate {cfg.train.learning_rate:g} · {loss} · augmentation {'on' if cfg.data.augment else 'off'}"
    )


def _waiting(job: Job, position: int, running: int, wait_s: float | None) -> str:
    wait = f", about **{fmt_duration(wait_s)}** from now" if wait_s else ""
    again = f" It goes on from epoch {job.paused.epochs_done} where it paused." if job.paused is not None else ""
    again = f" {md(job.note)}" if job.note else again
    return (
        f"**Waiting for a free training slot: you are number {position} in line**{wait} "
        f"({running} run{'s' if running != 1 else ''} training now; the wait is estimated from the time "
        f"budgets of the runs ahead). Your run starts by itself; Stop takes it out of the line.{again}"
    )


@dataclass
class RunView:
    """What the page shows of a run, folded from its events."""

    started: Started | None = None
    progress: Progress | None = None
    epochs: list[EpochEnd] = field(default_factory=list)
    previews_from: EpochEnd | None = None
    diagnosis_from: EpochEnd | None = None  # the newest epoch with a confusion matrix and worst images
    end: Done | Failed | None = None

    def add(self, ev: object) -> bool:
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
        if s is None:
            return None
        colors = tuple(cast(tuple[int, int, int], tuple(c)) for c in s.class_colors)  # from JSON: lists of 3
        return ClassSet(tuple(s.class_names), colors)

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
        """The Markdown under Train: the place in line, the epoch and batch with the time left, or how it ended."""
        if job.status == QUEUED:
            return _waiting(job, position, running, wait_s)
        if job.status == RUNNING or self.end is None:
            return self._running(job)
        return self._ended(job, self.end)

    def _running(self, job: Job) -> str:
        s = self.started
        if s is None:
            return "Preparing the data and measuring the fastest settings on this machine…"
        p = self.progress
        if p is not None and (not self.epochs or p.epoch > self.epochs[-1].epoch):
            parts = [f"**Epoch {p.epoch}/{s.epochs}**", f"batch {p.batch}/{p.n_batches}", f"{self.rate():.0f} images/s"]
        elif self.epochs:
            e = self.epochs[-1]
            parts = [f"**Epoch {e.epoch}/{s.epochs} done**", f"{e.images_per_s:.0f} images/s"]
        else:
            parts = [f"**Epoch 1/{s.epochs}** starting"]
        eta = self.eta_s(job)
        limit = job.config.train.time_budget_s
        if eta is not None and limit and self.epochs:  # a time budget ends the run first: say so
            eta = min(eta, max(0.0, limit - sum(e.seconds for e in self.epochs)))
        if eta is not None:
            parts.append(f"about {fmt_duration(eta)} left")
        best = self.best()
        if best:
            parts.append(f"kept so far: epoch {best.epoch}, val mIoU {best.miou:.3f}")
        if job.where:  # a cluster's worker (segdemo/server/cluster.py)
            parts.append(f"on the training cluster, worker process {int(job.where.get('pid') or 0)}")
        return (
            " · ".join(parts) + f"\n\nTraining on **{s.device}**, {s.precision} · {s.n_train} training / "
            f"{s.n_val} validation images · {s.parameters / 1e6:.2f} M parameters" + run_line(job.config) + self.notes()
        )

    def _ended(self, job: Job, end: Done | Failed) -> str:
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
            # instant mode on photos: the next step is a fine-tune (bench/README.md); on the built-in shapes the
            # minute preset trains the tutorial U-Net from scratch, which the sentence would misname
            if job.config.train.freeze_encoder and choose_encoder(job.config.data)[0] == LITE:
                tail += FINE_TUNE_NEXT
        else:
            tail = "no epoch finished, so no checkpoint was saved. Press Train to start again."
        if job.status == STOPPED:
            n = end.epochs_done
            return f"■ **Stopped** after {n} epoch{'s' if n != 1 else ''}{took}; {tail}" + run_line(job.config)
        if end.reason == "time_limit":
            planned = self.started.epochs if self.started else end.epochs_done
            budget = fmt_duration(job.config.train.time_budget_s or end.seconds)
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

    def curves(self) -> Curves | None:
        """The curves, or None until the first epoch (see TrainTab's plot: gradio must first see real columns)."""
        if not self.epochs:
            return None
        rows = [
            {"epoch": e.epoch, "value": float(v), "curve": name}
            for e in self.epochs
            for name, v in zip(CURVES, (e.train_loss, e.val_loss, e.miou), strict=True)
        ]
        planned = self.started.epochs if self.started else 1
        caption = None
        if len(self.epochs) == 1:
            e = self.epochs[0]
            caption = (
                f"Epoch {e.epoch}: train loss {e.train_loss:.3f} · val loss {e.val_loss:.3f} · val mIoU "
                f"{e.miou:.3f}. The lines appear from the next epoch on."
            )
        return Curves(rows, [1, max(5, planned)], caption)

    def table(self) -> tuple[list[str], list[list[str]]] | None:
        """(columns, rows) of the per-class IoU, latest epoch beside the kept one; None before the first epoch."""
        best = self.best()
        if not self.epochs or self.started is None or best is None:
            return None
        last = self.epochs[-1]
        cols = ["class", f"IoU, epoch {last.epoch} (latest)", f"IoU, epoch {best.epoch} (kept)"]
        rows = [
            [name, fmt_num(a, 3), fmt_num(b, 3)]
            for name, a, b in zip(self.started.class_names, last.per_class_iou, best.per_class_iou, strict=False)
        ]
        rows.append(["mean (mIoU)", fmt_num(last.miou, 3), fmt_num(best.miou, 3)])
        return cols, rows

    def filmstrip(self) -> list[Picture]:
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
        if ev is None or ev.confusion is None or classes is None:
            return ""
        return confusion_html(ev.confusion, classes, f"the validation images after epoch {ev.epoch}")

    def worst(self) -> list[Picture]:
        """The epoch's lowest-scoring validation images, each beside its error map."""
        ev = self.diagnosis_from
        if ev is None:
            return []
        return [
            (strip(upscale(p.image), upscale(error_map(p.pred, p.target))), f"{p.name}: mIoU {p.miou:.2f}")
            for p in ev.worst
        ]


def run_record(job: Job, position: int, wait_s: float | None) -> dict[str, Any]:
    """A run as JSON (/run_info): status, place in line, message, classes, one record per finished epoch and, for
    the newest epoch, where it fails (the confusion matrix and the worst validation images by name and mIoU)."""
    started = job.last(Started)
    return {
        "run_id": job.id,
        "status": job.status,
        "queue_position": position,
        "expected_wait_s": wait_s,
        "message": job.message,
        "note": job.note,  # e.g. a cluster worker lost: it goes on from its checkpoint
        "worker": job.where,  # on a cluster: the worker process and node training it now ({"pid", "node"}), else None
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
    if ev is None or ev.confusion is None or started is None:
        return None
    return {
        "epoch": ev.epoch,
        "confusion": confusion_to_dict(ev.confusion, started.class_names),
        "worst_images": [{"name": p.name, "miou": p.miou} for p in ev.worst],
    }
