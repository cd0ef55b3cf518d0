"""ZeroGPU: the free GPU hardware of Hugging Face Spaces, and the chunked training it needs.

On ZeroGPU a GPU is lent only while a function decorated with `@spaces.GPU` runs, for at most the duration
it asked for, out of each visitor's daily quota, and the function runs in a forked worker process: what it
changes in memory never comes back, only what it returns or yields and the files it writes. So here:

- `zero_gpu()` tells ZeroGPU the way the `spaces` package does (SPACES_ZERO_GPU); `gpu()` is `spaces.GPU`
  when `spaces` is installed (a no-op off ZeroGPU, as spaces documents) and a no-op without it.
- `predict()` runs Predictor.predict inside a decorated function (the Space refuses to start without one).
- `train_in_chunks()` trains a run as a chain of decorated calls: each builds a Trainer (resuming from the
  run folder's checkpoint after the first), trains at most a few hundred steps, saves a resumable
  checkpoint and returns. Its events stream back as the chunk yields them; Stop reaches the chunk through
  a file in the run folder, since the parent's flag cannot be seen from the worker process.

The same code runs locally, where the decorator does nothing: SEGDEMO_TRAIN_CHUNK_STEPS=N selects the
chunked path on any machine, which is how the tests cover it.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from segdemo.core.config import RunConfig
from segdemo.data.base import DataError, Splits
from segdemo.errors import ConfigError
from segdemo.events import Done, Event, Failed, Progress, Started
from segdemo.training.turns import Turns, is_paused

try:  # the real package: on a ZeroGPU Space it lends the GPU; elsewhere its decorator returns the function
    import spaces
except ImportError:  # the local install does not need it (requirements-spaces.txt has it)
    spaces = None

log = logging.getLogger(__name__)

STOP_FILE = ".stop"  # written into the run folder when Stop is pressed; the chunk's trainer checks it
DEFAULT_CHUNK_STEPS = 400  # optimiser steps per call on ZeroGPU; the duration cap may allow fewer
MAX_CALL_S = 60  # ZeroGPU's default duration: a shorter request queues sooner and fits a nearly spent quota
CALL_OVERHEAD_S = 15  # forking the worker, CUDA, data and model set-up, restoring the checkpoint
FIRST_GUESS_S_PER_STEP = 0.2  # before any chunk has been timed: the GPU preset's step, generously
MARGIN = 1.5  # on the measured seconds per step: a slower step must not overrun the lent time
PREDICT_S = 20  # one image through a small U-Net, plus the worker's start-up


def zero_gpu(env: Mapping[str, str] | None = None) -> bool:
    """True on a ZeroGPU Space: SPACES_ZERO_GPU read as spaces.config does ("1", "t" or "true", any case)."""
    value = (os.environ if env is None else env).get("SPACES_ZERO_GPU")
    return value is not None and value.lower() in ("1", "t", "true")


if zero_gpu() and spaces is None:
    log.warning(
        "SPACES_ZERO_GPU is set but the spaces package is missing, so no GPU will be lent: "
        "install requirements-spaces.txt on the Space"
    )


def gpu(duration: int | Callable[..., int] | None = None):
    """Decorator: spaces.GPU(duration=...) where spaces is installed, else leaves the function as it is.

    `duration` is seconds, or a function of the decorated function's arguments that returns them
    (spaces' dynamic duration)."""
    if spaces is not None:
        return spaces.GPU(duration=duration)
    return lambda fn: fn


def chunk_steps(env: Mapping[str, str] | None = None) -> int | None:
    """Steps per chunk when training runs in chunks (SEGDEMO_TRAIN_CHUNK_STEPS, else DEFAULT_CHUNK_STEPS on
    ZeroGPU), or None: train in one go."""
    env = os.environ if env is None else env
    raw = env.get("SEGDEMO_TRAIN_CHUNK_STEPS")
    if raw:
        try:
            steps = int(raw)
        except ValueError:
            raise ConfigError(f"SEGDEMO_TRAIN_CHUNK_STEPS must be a whole number of steps, got {raw!r}") from None
        return max(1, steps)
    return DEFAULT_CHUNK_STEPS if zero_gpu(env) else None


def max_call_s(env: Mapping[str, str] | None = None) -> int:
    """The most GPU seconds one chunk asks for: SEGDEMO_ZEROGPU_MAX_S, else MAX_CALL_S."""
    raw = (os.environ if env is None else env).get("SEGDEMO_ZEROGPU_MAX_S")
    return max(CALL_OVERHEAD_S + 5, int(raw)) if raw else MAX_CALL_S


# -- quota and other refusals from ZeroGPU ---------------------------------------------------------------


QUOTA_TODO = (
    "wait until your daily GPU quota resets, log in to Hugging Face for a larger quota, or run "
    "segdemo on your own computer (pip install it, see the README)"
)


def is_quota_error(e: BaseException) -> bool:
    """spaces raises gr.Error(title="ZeroGPU quota exceeded") when the visitor (or, for visitors it cannot
    identify, the Space) has too little GPU time left; the same title also covers "No GPU was available"
    after a queue timeout, which is not about quota."""
    title = str(getattr(e, "title", "") or "")
    return "ZeroGPU" in title and "quota" in title.lower() and not str(e).startswith("No GPU was available")


def is_zerogpu_error(e: BaseException) -> bool:
    """Any refusal spaces raises (quota, queue time-out, illegal duration, worker aborted): titled 'ZeroGPU ...'."""
    return str(getattr(e, "title", "") or "").startswith("ZeroGPU")


def _wait_hint(e: BaseException) -> str:
    """spaces' own "Try again in 13:45:10." as " (try again in 13:45:10)", when it says so."""
    m = re.search(r"Try again in ([0-9:., a-z]+?)\.(\s|$)", str(e))
    return f" (Hugging Face says: try again in {m.group(1)})" if m else ""


def quota_message(e: BaseException, what: str) -> str:
    """The visitor's sentence for a quota refusal; `what` says what did not happen."""
    return f"You have used up your ZeroGPU time on this Space for now{_wait_hint(e)}, so {what}: {QUOTA_TODO}."


# -- predict ------------------------------------------------------------------------------------------


def app_device() -> str:
    """Where the app's own process keeps a model: "cpu" on ZeroGPU, where CUDA is only emulated outside
    @spaces.GPU functions (a model moved to "cuda" from a request's thread fails there) and the worker moves
    its copy to the GPU; else "auto", the GPU when there is one."""
    return "cpu" if zero_gpu() else "auto"


@gpu(duration=PREDICT_S)
def _predict_on_gpu(predictor, image, target, alpha, probabilities):
    if spaces is not None and zero_gpu():  # in ZeroGPU's worker with the GPU lent: a pickled copy, move it freely
        import torch

        if torch.cuda.is_available():
            predictor.device = torch.device("cuda")
            predictor.model.to(predictor.device)
    try:
        return predictor.predict(image, target=target, alpha=alpha, probabilities=probabilities)
    except DataError as e:  # ZeroGPU turns an exception into a bare "worker error": bring the sentence back
        return e


def predict(predictor, image, *, target=None, alpha: float = 0.5, probabilities: bool = True):
    """Predictor.predict inside a @spaces.GPU function; raises DataError as predict does, and a gr.Error with
    the visitor's sentence when ZeroGPU refuses for quota."""
    try:
        out = _predict_on_gpu(predictor, image, target, alpha, probabilities)
    except Exception as e:
        if is_quota_error(e):
            import gradio as gr

            raise gr.Error(quota_message(e, "this image was not segmented"), title="Out of GPU time") from None
        raise
    if isinstance(out, DataError):
        raise out
    return out


# -- chunked training ---------------------------------------------------------------------------------


@dataclass
class Chunk:
    """One decorated call's work; pickled into ZeroGPU's worker process, so plain data only."""

    config: RunConfig
    run_dir: str
    splits: Splits | None
    resume: bool
    max_steps: int
    seconds: int  # the GPU time asked for (spaces' dynamic duration reads it)
    memory_budget: int | None = None


def _chunk_seconds(chunk: Chunk) -> int:
    return chunk.seconds


@gpu(duration=_chunk_seconds)
def train_chunk(chunk: Chunk) -> Iterator[Event]:
    """Train at most chunk.max_steps steps and yield every event; the last is Done (reason "paused" when steps
    remain, a resumable checkpoint written) or Failed. Stop is the run folder's STOP_FILE."""
    from segdemo.training.trainer import Trainer

    stop = Path(chunk.run_dir) / STOP_FILE
    trainer = Trainer(
        chunk.config,
        chunk.run_dir,
        splits=chunk.splits,
        should_stop=stop.exists,
        resume=chunk.resume,
        memory_budget=chunk.memory_budget,
        max_steps=chunk.max_steps,
    )
    yield from trainer.events()


def plan_chunk(max_steps: int, s_per_step: float | None, cap_s: int) -> tuple[int, int]:
    """(steps, seconds to ask for): at most max_steps, as many as fit in cap_s at the measured (or first-guess)
    seconds per step with MARGIN, and at least one."""
    per_step = (s_per_step if s_per_step is not None else FIRST_GUESS_S_PER_STEP) * MARGIN
    fit = int((cap_s - CALL_OVERHEAD_S) / per_step) if per_step > 0 else max_steps
    steps = max(1, min(max_steps, fit))
    return steps, min(cap_s, math.ceil(CALL_OVERHEAD_S + steps * per_step))


def train_in_chunks(
    config: RunConfig,
    run_dir: str | Path,
    *,
    splits: Splits | None = None,
    stop: threading.Event | None = None,
    should_pause: Callable[[], bool] | None = None,
    on_event: Callable[[Event], None] | None = None,
    turns: Turns | None = None,
    memory_budget: int | None = None,
    steps: int | None = None,
    resume: bool = False,
    context: contextvars.Context | None = None,
    chunk_fn: Callable[[Chunk], Iterator[Event]] | None = None,
) -> Done | Failed:
    """Train a run to the end as a chain of chunk_fn calls, each a turn of the run (segdemo/training/turns.py):
    returns (and sends to the watcher) the final Done or Failed, as Trainer.run() does, or returns (unsent)
    Done("paused") when should_pause() says so after a chunk (the job manager's fair share: the run gives its
    slot to another address's and resumes later).

    turns: the run's (a job's, whose fair turns the chunks make up), else turns for on_event. stop: the job's
    Stop flag. steps: per chunk (default chunk_steps()). context: the Train click's, so spaces bills each chunk
    to the visitor who pressed Train (a job runs in its own thread, where Gradio's request is otherwise unknown).
    The run's time limit (config.train.time_budget_s): the trainer counts its own seconds across chunks, and
    no chunk starts once the limit has passed since this call, waits for a GPU included.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stop = stop or threading.Event()
    stop_file = run_dir / STOP_FILE
    stop_file.unlink(missing_ok=True)  # left by an earlier Stop of this run folder
    watcher = _StopWatcher(stop, stop_file)
    chain = _Chain(
        config=config,
        run_dir=run_dir,
        splits=splits,
        resume=resume,
        memory_budget=memory_budget,
        steps=steps or chunk_steps() or DEFAULT_CHUNK_STEPS,
        chunk_fn=chunk_fn or train_chunk,  # looked up now, so a test can put a double in its place
        context=context,
    )
    try:
        return chain.run(turns or Turns(on_event), stop=stop, should_pause=should_pause or (lambda: False))
    finally:
        watcher.close()
        stop_file.unlink(missing_ok=True)


@dataclass(kw_only=True)
class _Chain:
    """The chunks of one train_in_chunks call, each sized to fit its GPU call at the measured pace."""

    config: RunConfig
    run_dir: Path
    splits: Splits | None
    resume: bool
    memory_budget: int | None
    steps: int
    chunk_fn: Callable[[Chunk], Iterator[Event]]
    context: contextvars.Context | None
    t0: float = field(default_factory=time.monotonic)

    def run(self, turns: Turns, *, stop: threading.Event, should_pause: Callable[[], bool]) -> Done | Failed:
        limit, cap_s = self.config.train.time_budget_s, max_call_s()
        s_per_step, paused = None, None  # this call's pace, and where its last chunk paused
        while True:
            if paused is not None and (stop.is_set() or (limit is not None and time.monotonic() - self.t0 >= limit)):
                return turns.end(self._timed(replace(paused, reason="stopped" if stop.is_set() else "time_limit")))
            n, seconds = plan_chunk(self.steps, s_per_step, cap_s)
            chunk = Chunk(
                config=self.config,
                run_dir=str(self.run_dir),
                splits=self.splits,
                resume=self.resume or paused is not None,
                max_steps=n,
                seconds=seconds,
                memory_budget=self.memory_budget,
            )
            pace = _Pace()
            try:
                last = turns.play(pace.watch(_iterate(self.chunk_fn(chunk), self.context)))
            except Exception as e:
                if not is_zerogpu_error(e):
                    raise
                return turns.end(_refused(e, paused))
            if last is None:
                return turns.end(
                    Failed(
                        message="the training worker ended without a result; start the run again",
                        detail="chunk yielded no Done or Failed",
                    )
                )
            if not is_paused(last):
                return turns.end(self._timed(last))
            assert isinstance(last, Done)
            s_per_step = pace.s_per_step() or s_per_step  # measured on this chunk, for the next call
            paused = last
            if should_pause() and not stop.is_set():
                return self._timed(paused)

    def _timed(self, result: Done | Failed) -> Done | Failed:
        """A Done with the seconds of this whole call, as one Trainer.run() counts its run's."""
        return replace(result, seconds=time.monotonic() - self.t0) if isinstance(result, Done) else result


class _Pace:
    """Seconds per training step in one chunk: from its Started (set-up done) to its last Progress."""

    def __init__(self) -> None:
        self.t_started: float | None = None
        self.trained = 0

    def watch(self, events: Iterable[Event]) -> Iterator[Event]:
        for ev in events:
            if isinstance(ev, Started):
                self.t_started = time.monotonic()
            elif isinstance(ev, Progress):
                self.trained += 1
            yield ev

    def s_per_step(self) -> float | None:
        if not self.trained or self.t_started is None:
            return None
        return (time.monotonic() - self.t_started) / self.trained


def _iterate(events: Iterator[Event], context: contextvars.Context | None) -> Iterator[Event]:
    """Each step of the chunk's generator inside `context` (spaces reads the visitor's request from it)."""
    if context is None:
        yield from events
        return
    while True:
        try:
            yield context.run(next, events)
        except StopIteration:
            return


def _refused(e: BaseException, paused: Done | None) -> Failed:
    """ZeroGPU refused the next chunk: say so, and what is kept."""
    if paused is not None and paused.epochs_done:
        kept = f"training stopped after epoch {paused.epochs_done}, whose checkpoint is kept"
    elif paused is not None:
        kept = "training stopped before its first epoch ended; its resumable checkpoint is kept"
    else:
        kept = "training did not start"
    if is_quota_error(e):
        return Failed(message=quota_message(e, kept), detail=f"ZeroGPU: {e}")
    return Failed(
        message=f"The Space's GPU service refused to go on ({e}), so {kept}; press Train to try again later",
        detail=f"ZeroGPU: {e}",
    )


class _StopWatcher:
    """Turns the job's in-memory Stop flag into STOP_FILE the moment it is set, so that a chunk running in
    another process (ZeroGPU's worker) sees it before its next batch."""

    def __init__(self, stop: threading.Event, stop_file: Path):
        self._closed = False
        self._stop = stop
        self._thread = threading.Thread(target=self._loop, args=(stop_file,), name="segdemo-stop-watcher", daemon=True)
        self._thread.start()

    def _loop(self, stop_file: Path) -> None:
        while not self._closed:
            if self._stop.wait(0.5):  # wakes at once on Stop; the timeout only notices close()
                if not self._closed:
                    stop_file.touch()
                return

    def close(self) -> None:
        self._closed = True
        self._thread.join()
