"""The learning-rate schedule: how far through its run a step is, the rate there, and the "plateau" rule.

Pure functions of the loop's numbers (and LoopState's plateau fields), so a resumed run or a chunk of one
computes exactly the rate one unbroken run would."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from segdemo.training.resume import LoopState

WARMUP = 0.1  # share of the run (steps or time, whichever is further along) spent warming the rate up
PLATEAU_PATIENCE, PLATEAU_FACTOR = 2, 0.5  # as torch's ReduceLROnPlateau(mode="max", patience=2, factor=0.5)


def schedule_progress(step: int, total_steps: int, elapsed_s: float, time_budget_s: float | None) -> float:
    """How far through its schedule a run is, 0..1: by steps, or by time when a time budget ends it first,
    so the learning rate reaches its end exactly at the budget (a preset's run) as well as at the last step."""
    by_steps = step / max(1, total_steps)
    return min(1.0, max(by_steps, elapsed_s / time_budget_s if time_budget_s else 0.0))


def lr_at(progress: float, base_lr: float, schedule: str, plateau_scale: float = 1.0) -> float:
    """The learning rate at `progress` (0..1) of the run.

    warmup_cosine: linear warm-up over the first 10%, then a cosine down to 1% of base_lr.
    plateau: the same warm-up, then base_lr times plateau_scale, which halves after 3 epochs without a
    better val mIoU (plateau_step). constant: base_lr throughout.
    """
    if schedule == "constant":
        return base_lr
    if progress < WARMUP:
        return base_lr * (0.1 + 0.9 * progress / WARMUP)
    if schedule == "plateau":
        return base_lr * plateau_scale
    t = (progress - WARMUP) / (1 - WARMUP)
    return base_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def next_epoch_misses_budget(elapsed_s: float, epoch_s: float, time_budget_s: float | None) -> bool:
    """Would one more epoch as long as the last one end after the budget (and be cut off unevaluated)?"""
    return time_budget_s is not None and elapsed_s + epoch_s > time_budget_s


def plateau_step(state: LoopState, improved: bool) -> None:
    """ReduceLROnPlateau on val mIoU, kept in the loop state so a resumed run goes on with it."""
    state.plateau_bad = 0 if improved else state.plateau_bad + 1
    if state.plateau_bad > PLATEAU_PATIENCE:
        state.plateau_scale *= PLATEAU_FACTOR
        state.plateau_bad = 0
