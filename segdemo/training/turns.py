"""A run as resumable turns, seen by its watcher as one run.

A run may train in several turns: ZeroGPU's chunks (each a GPU call of a few hundred steps,
segdemo/server/zerogpu.py), a server's fair share (a long run yields its slot to another address's and goes
on later, segdemo/server/jobs.py), or both, a fair turn made of chunks. Each turn is a Trainer that resumes
from the run folder's checkpoint (segdemo/training/resume.py) and ends with Done("paused") while work remains.

Whoever watches the run (a job's page, its record) must see one run: one Started, every Progress and
EpochEnd, then one Done or Failed. Turns is the only place that stitches them: every turn's events pass
through feed() or play(), which let only the run's first Started through and keep each turn's last event
back; pause() records where the run stands between turns and end() sends its one end to the watcher."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TypeGuard

from segdemo.events import Done, Event, Failed, Started

PAUSED = "paused"  # the reason of a turn's Done when the run goes on in another turn


def is_paused(ev: Event | None) -> TypeGuard[Done]:
    """A turn's end that is not the run's."""
    return isinstance(ev, Done) and ev.reason == PAUSED


class Turns:
    """One run's turns, for one watcher. Not thread-safe: a run's turns follow each other in one thread."""

    def __init__(self, watcher: Callable[[Event], None] | None = None, *, started: bool = False) -> None:
        self.watcher: Callable[[Event], None] = watcher or (lambda ev: None)
        self.started = started  # the watcher has the run's Started (a run restored after a restart has it)
        self.paused: Done | None = None  # where the run stands while it waits for its next turn
        self.ended: Done | Failed | None = None  # the run's end, once sent
        self._last: Done | Failed | None = None  # the turn in progress's last event, kept back

    def feed(self, ev: Event) -> None:
        """One event of the turn in progress: to the watcher, except a later turn's Started and the turn's
        Done or Failed (kept: the caller ends the turn with pause() or the run with end())."""
        if isinstance(ev, Done | Failed):
            self._last = ev
            return
        if isinstance(ev, Started):
            if self.started:
                return
            self.started = True
        self.watcher(ev)

    def play(self, events: Iterable[Event]) -> Done | Failed | None:
        """Feed a whole turn; returns its last event (Done or Failed; None if it ended without one)."""
        self._last = None
        for ev in events:
            self.feed(ev)
        return self._last

    def pause(self, paused: Done) -> None:
        """The turn ended with work left: the run waits for its next turn, which resumes from the checkpoint."""
        self.paused = paused

    def end(self, result: Done | Failed) -> Done | Failed:
        """The run's end: sent to the watcher the first time only (a run ends once, whoever says so first)."""
        if self.ended is None:
            self.ended = result
            self.watcher(result)
        return result

    def stop(self, reason: str = "stopped") -> Done | Failed:
        """End the run between turns (a Stop, a time limit): what it had when it paused, or nothing."""
        if self.paused is not None:
            return self.end(replace(self.paused, reason=reason))
        return self.end(
            Done(
                reason=reason,
                epochs_done=0,
                best_miou=None,
                best_epoch=None,
                best_checkpoint=None,
                last_checkpoint=None,
                seconds=0.0,
            )
        )
