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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from segdemo.config import RunConfig
from segdemo.data.base import DataError, Splits
from segdemo.errors import ConfigError
from segdemo.events import Done, Event, Failed, Progress, Started

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
    memory_budget: int | None = None,
    steps: int | None = None,
    resume: bool = False,
    context: contextvars.Context | None = None,
    chunk_fn: Callable[[Chunk], Iterator[Event]] | None = None,
) -> Done | Failed:
    """Train a run to the end as a chain of chunk_fn calls; returns (and sends to on_event) the final Done or
    Failed, as Trainer.run() does, or Done("paused") when should_pause() says so after a chunk (the job
    manager's fair share: the run gives its slot to another address's and resumes later).

    stop: the job's Stop flag. steps: per chunk (default chunk_steps()). context: the Train click's, so spaces
    bills each chunk to the visitor who pressed Train (a job runs in its own thread, where Gradio's request is
    otherwise unknown).
    The run's time limit (config.train.time_limit_s): the trainer counts its own seconds across chunks, and
    no chunk starts once the limit has passed since this call, waits for a GPU included.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stop = stop or threading.Event()
    should_pause = should_pause or (lambda: False)
    chunk_fn = chunk_fn or train_chunk  # looked up now, so a test can put a double in its place
    on_event = on_event or (lambda ev: None)
    steps = steps or chunk_steps() or DEFAULT_CHUNK_STEPS
    cap_s = max_call_s()
    limit = config.train.time_limit_s
    t0 = time.monotonic()
    stop_file = run_dir / STOP_FILE
    stop_file.unlink(missing_ok=True)  # left by an earlier Stop of this run folder
    watcher = _StopWatcher(stop, stop_file)
    sent_started, s_per_step, paused = False, None, None

    def finish(result: Done | Failed) -> Done | Failed:
        if isinstance(result, Done):
            result = replace(result, seconds=time.monotonic() - t0)
        on_event(result)
        return result

    try:
        while True:
            if paused is not None and (stop.is_set() or (limit is not None and time.monotonic() - t0 >= limit)):
                return finish(replace(paused, reason="stopped" if stop.is_set() else "time_limit"))
            n, seconds = plan_chunk(steps, s_per_step, cap_s)
            chunk = Chunk(config, str(run_dir), splits, resume or paused is not None, n, seconds, memory_budget)
            last, trained, t_started = None, 0, None
            try:
                for ev in _iterate(chunk_fn(chunk), context):
                    if isinstance(ev, Done | Failed):
                        last = ev
                        continue
                    if isinstance(ev, Started):
                        t_started = time.monotonic()
                        if sent_started:  # one Started per run, as an unchunked run sends
                            continue
                        sent_started = True
                    elif isinstance(ev, Progress):
                        trained += 1
                    on_event(ev)
            except Exception as e:
                if not is_zerogpu_error(e):
                    raise
                return finish(_refused(e, paused))
            if last is None:
                return finish(
                    Failed(
                        message="the training worker ended without a result; start the run again",
                        detail="chunk yielded no Done or Failed",
                    )
                )
            if isinstance(last, Failed) or last.reason != "paused":
                return finish(last)
            if trained and t_started is not None:  # time per step measured on this chunk, for the next call
                s_per_step = (time.monotonic() - t_started) / trained
            paused = last
            if should_pause() and not stop.is_set():
                return finish(paused)
    finally:
        watcher.close()
        stop_file.unlink(missing_ok=True)


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
