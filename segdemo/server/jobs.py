"""Training runs in background threads, one registry per server, owned by browser sessions.

A Job owns one run: its thread, its stop flag, its event history and its run folder
`root_dir/<job_id>/`. The JobManager keeps the registry, a fair FIFO queue and a server-wide cap
on how many runs TRAIN at once; queued runs wait in their own thread for their turn. Its two helpers
have a file each: segdemo/server/tokens.py (signed owner tokens) and segdemo/server/runstore.py (run folders, job.json
records, restoring runs after a restart, sweeping old folders).

Ownership: every call names an owner (an opaque secret string the UI keeps per browser) and a
job id (an unguessable token). Both must match: a wrong id and someone else's id get the same
"no such run" error, so a run id alone never touches a run and nobody learns that another's exists.
The manager stores only a SHA-256 of the owner, never the owner string itself (job.json on disk too).

Nothing here imports gradio: the UI, tests and scripts drive the same manager.
"""

from __future__ import annotations

import atexit
import contextvars
import copy
import dataclasses
import functools
import hashlib
import hmac
import logging
import math
import os
import secrets
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segdemo.core import budget
from segdemo.core.config import RunConfig
from segdemo.data.base import ClassSet, Splits
from segdemo.data.zipdata import ZIP_MARKER
from segdemo.errors import JobError, UserError
from segdemo.events import Done, EpochEnd, Event, Failed, Started
from segdemo.server.cluster import Cluster
from segdemo.server.limits import ensure_free_disk
from segdemo.server.runstore import RunStore, default_root_dir
from segdemo.server.tokens import OwnerTokens, hash_owner
from segdemo.training.turns import PAUSED, Turns, is_paused

log = logging.getLogger(__name__)
QUEUED, RUNNING, DONE, STOPPED, FAILED = "queued", "running", "done", "stopped", "failed"
DEFAULT_TTL_S = 24 * 3600  # runs and labelled sets outlive a two-hour workshop and the evening after it
MAX_QUEUED = int(os.environ.get("SEGDEMO_MAX_QUEUED") or 64)  # runs waiting for a slot, server-wide
RUNS_PER_ADDRESS = int(os.environ.get("SEGDEMO_RUNS_PER_ADDRESS") or 40)  # waiting or training, one address
SETUP_S = 3.0  # a run's start on its slot (data, model, optimiser) until the server has seen some
UNKNOWN_RUN_S = 60.0  # a run with neither a time budget nor any epoch seen yet on this server
TRUSTED_FACTOR = 4  # an instructor-trusted address (the room's router) gets this many times the per-address caps
ACTIVE = (QUEUED, RUNNING)
FINISHED = (DONE, STOPPED, FAILED)

NO_SUCH_RUN = "No such run for this browser session: it may have expired or been deleted. Start a new run"


PAGE_ARRAYS = ("previews", "worst", "confusion")  # an EpochEnd's pictures and matrix, for the page


def _carries(ev: EpochEnd, name: str) -> bool:
    v = getattr(ev, name)
    return v is not None and len(v) > 0


class Job:
    """One training run. Read `status`, `events`, `result`; wait with `wait_events`."""

    def __init__(
        self,
        job_id: str,
        owner_key: str,
        config: RunConfig,
        run_dir: Path,
        splits: Splits | None = None,
        client_key: str | None = None,
    ):
        self.id = job_id
        self.owner_key = owner_key  # sha256 of the owner; compared in constant time
        self.client_key = client_key  # sha256 of the submitting address, for per-address limits
        self.config = config
        self.run_dir = run_dir
        self.splits = splits
        self.status = QUEUED
        self.created = time.time()
        self.started: float | None = None  # when it began TRAINING (left the queue)
        self.slice_started: float | None = None  # when its current turn on a training slot began
        self.turns = Turns()  # its turns on a slot, one run to its watchers (segdemo/training/turns.py)
        self.priority = False  # an instructor moved it to the front of the line
        self.slot_s = 0.0  # seconds it has held a training slot, all its turns together
        self.budget_s = config.train.time_budget_s  # its own time budget, before the server's cap (max_run_s)
        self.finished: float | None = None
        self.result: Done | Failed | None = None
        self.stop_event = threading.Event()
        self.events: list[Event] = []
        self._cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self.where: dict[str, Any] | None = None  # on a cluster: the worker training it now (segdemo/server/cluster.py)
        self.note = ""  # a sentence for its page beside the status (a lost worker, ...)
        self.losses = 0  # cluster workers it lost
        # the submitter's context (in the app: Gradio's request for the Train click), so that on ZeroGPU each
        # training chunk is asked for on behalf of the visitor who pressed Train (segdemo/server/zerogpu.py)
        self.context = contextvars.copy_context()

    # -- events ------------------------------------------------------------------------------------

    def _append(self, event: Event) -> None:
        with self._cond:
            if isinstance(event, EpochEnd):
                # Only the latest filmstrip, worst images and confusion are shown: older epochs drop what the
                # new one brings again (a copy, so a reader holding the old event keeps its pictures) and a
                # long run stays small in memory.
                for i in range(len(self.events) - 1, -1, -1):
                    old = self.events[i]
                    if isinstance(old, EpochEnd):
                        drop: dict[str, Any] = {
                            k: None if k == "confusion" else []
                            for k in PAGE_ARRAYS
                            if _carries(event, k) and _carries(old, k)
                        }
                        if drop:
                            self.events[i] = dataclasses.replace(old, **drop)
                        break
            self.events.append(event)
            self._cond.notify_all()

    def wait_events(self, since: int = 0, timeout: float | None = None) -> list[Event]:
        """Events from index `since` on; waits up to `timeout` seconds for one if there is none yet.

        Returns an empty list on timeout, or at once when the job is over and nothing is new.
        """
        with self._cond:
            if len(self.events) <= since and self.status in ACTIVE and timeout != 0:
                self._cond.wait_for(lambda: len(self.events) > since or self.status not in ACTIVE, timeout)
            return list(self.events[since:])

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # -- views -------------------------------------------------------------------------------------

    @property
    def paused(self) -> Done | None:
        """Set while it waits for another turn, after yielding its slot."""
        return self.turns.paused

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE

    def last(self, kind: type) -> Any:
        """The most recent event of a type, or None."""
        for ev in reversed(self.events):
            if isinstance(ev, kind):
                return ev
        return None

    @property
    def best_checkpoint(self) -> Path | None:
        """The run's best checkpoint once it is over (None while it runs or when no epoch finished)."""
        if self.status in ACTIVE:
            return None
        p = self.run_dir / "best.safetensors"
        return p if p.is_file() else None

    @property
    def message(self) -> str:
        """One line for the user about how the run ended (empty while it runs)."""
        r = self.result
        if isinstance(r, Failed):
            return r.message
        if isinstance(r, Done):
            best = (
                f"best val mIoU {r.best_miou:.3f} at epoch {r.best_epoch}"
                if r.best_miou is not None
                else "no epoch finished, so there is no checkpoint"
            )
            how = {"finished": "finished", "stopped": "stopped", "time_limit": "used its time budget"}
            return f"{how.get(r.reason, r.reason)} after {r.epochs_done} epoch(s) in {r.seconds:.0f}s; {best}"
        return ""

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "message": self.message,
        }


def default_max_run_s() -> float:
    """SEGDEMO_MAX_RUN_S, else 30 minutes: no run holds a training slot longer than this."""
    return float(os.environ.get("SEGDEMO_MAX_RUN_S") or 1800)


def default_max_concurrent(cluster: Cluster | None = None) -> int:
    """SEGDEMO_MAX_CONCURRENT; else as many runs as the cluster holds; else 1 on CPU, 2 with CUDA."""
    env = os.environ.get("SEGDEMO_MAX_CONCURRENT")
    if env:
        return max(1, int(env))
    if cluster is not None:
        try:
            return cluster.slots()
        except Exception as e:  # the app starts anyway: runs say the cluster cannot be reached
            log.warning("the training cluster at %s cannot be reached at start (%s): 1 slot", cluster.address, e)
            return 1
    import torch

    return 2 if torch.cuda.is_available() else 1


class JobManager:
    """Registry + FIFO queue + cap on concurrently training runs. Thread-safe."""

    def __init__(
        self,
        root_dir: str | Path,
        max_concurrent: int = 1,
        ttl_s: float = 3600,
        *,
        max_queued: int = MAX_QUEUED,
        max_runs_per_owner: int = 5,
        max_active_per_client: int = RUNS_PER_ADDRESS,
        max_run_s: float | None = 1800,
        memory_budget: int | None = None,
        persist: bool | None = None,
        reaper: bool = True,
        secret: bytes | None = None,
        trainer_factory: Callable[..., Any] | None = None,
        fair_slice_s: float | None = None,
        resume_on_restart: bool | None = None,
        cluster: Cluster | None = None,
    ):
        self.root_dir = Path(root_dir)
        self.max_concurrent = max(1, int(max_concurrent))
        self.ttl_s = float(ttl_s)
        self.max_queued = max_queued
        self.max_runs_per_owner = max_runs_per_owner
        # one address's runs waiting or training at once: a classroom behind one router shares an address, so
        # this is sized for a class (each browser has one run at a time anyway); the fair order below keeps
        # one address's runs from holding the slots, and an instructor may trust the room's address (x4)
        self.max_active_per_client = max_active_per_client
        self.trusted: set[str] = set()  # address keys an instructor vouched for (a classroom's router)
        self.max_run_s = max_run_s  # server-wide time limit per run; None = none
        # a run that has trained this long yields its slot when another address's run waits, and goes on
        # (exactly where it paused) at its next turn: one long run can't hold a classroom's only slot
        self.fair_slice_s = (
            fair_slice_s if fair_slice_s is not None else float(os.environ.get("SEGDEMO_FAIR_SLICE_S", "90"))
        )
        self._served: dict[str, float] = {}  # training seconds each address has had
        self.memory_budget = memory_budget or budget.run_budget(self.max_concurrent)  # bytes one run may use
        self._durations: deque[float] = deque(maxlen=20)  # of recent runs, to say when a full queue frees up
        self._epoch_s: deque[float] = deque(maxlen=50)  # recent epochs' seconds, for the waits shown in line
        self._setup_s: deque[float] = deque(maxlen=20)  # from a slot to the first epoch's training
        self.on_forget: list[Callable[[Job], None]] = []  # called when a run and its folder are deleted
        self.store = RunStore(self.root_dir, persist)
        self.runs_persist = self.store.persist
        self._jobs: dict[str, Job] = {}
        self._queue: deque[Job] = deque()
        self._running: set[str] = set()
        self._lock = threading.Condition()
        self._closed = threading.Event()
        self.tokens = OwnerTokens(secret, self.root_dir)
        self._trainer_factory = trainer_factory
        self.cluster = cluster  # runs train on a Ray cluster (segdemo/server/cluster.py); None: in threads here
        # after a restart (a persistent run folder), runs that were waiting or training go on
        self.resume_on_restart = self.store.persist if resume_on_restart is None else resume_on_restart
        for job in self._load_existing():
            self._start_thread(job)
        self._reaper = None
        if reaper:
            self._reaper = threading.Thread(target=self._reap_loop, name="segdemo-reaper", daemon=True)
            self._reaper.start()

    @classmethod
    def from_env(cls, **kw) -> JobManager:
        """Root from default_root_dir(); SEGDEMO_MAX_CONCURRENT (1 on CPU, 2 with CUDA); SEGDEMO_RUN_TTL_S."""
        root, persist, created = default_root_dir()
        if created:  # our own fresh temp folder dies with the process: leave no litter in /tmp
            atexit.register(shutil.rmtree, root, True)
        ttl = float(os.environ.get("SEGDEMO_RUN_TTL_S") or DEFAULT_TTL_S)
        kw.setdefault("max_run_s", default_max_run_s())
        cluster = kw.setdefault("cluster", Cluster.from_env())
        return cls(root, default_max_concurrent(cluster), ttl, persist=persist, **kw)

    # -- owner tokens (segdemo/server/tokens.py) --------------------------------------------------------------

    def issue_owner_token(self) -> str:
        return self.tokens.issue()

    def valid_owner_token(self, token: Any) -> bool:
        return self.tokens.valid(token)

    # -- submitting and stopping -----------------------------------------------------------------------

    def submit(
        self,
        owner: str,
        config: RunConfig,
        splits: Splits | None = None,
        data_file: str | Path | None = None,
        *,
        client: str | None = None,
        num_classes: int | None = None,
    ) -> Job:
        """Queue a run for `owner`; refuse (JobError) when that owner already has one queued or running,
        when `client` (the caller's address) has max_active_per_client, when the queue is full, or when the
        settings would need more memory than a run may use (num_classes: the data's, when known).

        The run's time limit becomes at most the server's max_run_s. data_file (e.g. an uploaded zip) is
        copied into the run folder and becomes config.data.source, so the run never depends on an upload
        cache that may be cleaned while it waits.
        """
        key = hash_owner(owner)
        client_key = address_key(client) if client else None
        config = copy.deepcopy(config)
        try:
            config.validate()
            budget.check_training(config, self.memory_budget, num_classes)
        except UserError as e:  # a ConfigError or BudgetError
            raise JobError(f"These settings cannot train: {e}") from None
        budget_s = config.train.time_budget_s  # the run's own budget (a preset's), for the waits shown in line
        if self.max_run_s is not None:
            config.train.time_budget_s = min(config.train.time_budget_s or math.inf, self.max_run_s)
        self.cleanup_expired()
        ensure_free_disk(self.root_dir)  # checkpoints of the runs already going need the room more
        with self._lock:
            if self._closed.is_set():
                raise JobError("The server is shutting down; try again in a minute")
            mine = [j for j in self._jobs.values() if j.owner_key == key]
            if any(j.is_active for j in mine):
                raise JobError(
                    "You already have a run in progress (Train was pressed twice?); press Stop or "
                    "wait for it to finish before starting another"
                )
            if client_key is not None:
                n = sum(j.is_active and j.client_key == client_key for j in self._jobs.values())
                if n >= self.address_cap(client or ""):
                    raise JobError(
                        f"{n} runs from your network address are waiting or training, the most this server allows "
                        "for one address (everyone behind one router shares it): wait a few minutes for some to "
                        "finish. An instructor can trust the room's address in the Instructor tab, or the host can "
                        "raise SEGDEMO_RUNS_PER_ADDRESS"
                    )
            if len(self._queue) >= self.max_queued:
                raise JobError(
                    f"The server is busy: {len(self._queue)} runs are waiting. Try again in about "
                    f"{self._minutes_until_free()} minutes"
                )
            job_id = secrets.token_urlsafe(16)
            job = Job(job_id, key, config, self.store.new_folder(job_id), splits, client_key)
            job.budget_s = budget_s
            if data_file is not None:
                src = Path(data_file)
                dst = job.run_dir / "upload" / src.name
                dst.parent.mkdir()
                shutil.copyfile(src, dst)
                config.data.source = str(dst)
            if config.model.encoder_weights:  # uploaded encoder weights: the run keeps its own copy, as of the data
                src = Path(config.model.encoder_weights)
                dst = job.run_dir / "upload" / f"encoder-{src.name}"
                dst.parent.mkdir(exist_ok=True)
                shutil.copyfile(src, dst)
                config.model.encoder_weights = str(dst)
            self._jobs[job_id] = job
            self._queue.append(job)
            self.store.save(job)
            old = sorted((j for j in mine if not j.is_active), key=lambda j: j.created)
            extra = old[: max(0, len(old) - (self.max_runs_per_owner - 1))]
            for j in extra:  # keep this owner's few latest runs; older ones free their disk now
                self._forget(j)
            self._start_thread(job)
        return job

    def address_factor(self, client: str) -> int:
        """How many times the per-address caps an address gets: TRUSTED_FACTOR once an instructor vouched for it."""
        return TRUSTED_FACTOR if address_key(client) in self.trusted else 1

    def address_cap(self, client: str) -> int:
        """Runs one address may have waiting or training at once (more for an instructor-trusted one)."""
        return self.max_active_per_client * self.address_factor(client)

    def stop(self, owner: str, job_id: str | None = None) -> Job:
        """Stop the owner's run (`job_id`, or their active one): a queued run leaves the queue at once,
        a training run stops before its next batch and keeps its best checkpoint."""
        with self._lock:
            if job_id is None:
                job = self.active_for(owner)
                if job is None:
                    raise JobError("Nothing is running to stop; press Train to start a run")
            else:
                job = self.get(owner, job_id)
        return self._stop_job(job)

    def _stop_job(self, job: Job) -> Job:
        with self._lock:
            if not job.is_active:
                raise JobError("That run has already ended; there is nothing to stop")
            job.stop_event.set()
            if job.status == QUEUED and job in self._queue:
                self._queue.remove(job)
            self._lock.notify_all()
        job._notify()
        return job

    # -- lookups ----------------------------------------------------------------------------------------

    def get(self, owner: str, job_id: str) -> Job:
        """The owner's job with that id; JobError(NO_SUCH_RUN) for a wrong id and for another's id alike."""
        key = hash_owner(owner)
        with self._lock:
            job = self._jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None or not hmac.compare_digest(job.owner_key, key):
            raise JobError(NO_SUCH_RUN)
        return job

    def jobs_for(self, owner: str) -> list[Job]:
        """The owner's jobs, oldest first."""
        key = hash_owner(owner)
        with self._lock:
            return sorted(
                (j for j in self._jobs.values() if hmac.compare_digest(j.owner_key, key)),
                key=lambda j: j.created,
            )

    def active_for(self, owner: str) -> Job | None:
        return next((j for j in self.jobs_for(owner) if j.is_active), None)

    def latest_for(self, owner: str) -> Job | None:
        jobs = self.jobs_for(owner)
        return jobs[-1] if jobs else None

    def queue_position(self, job: Job) -> int:
        """1 = next to start, 2 = after that...; 0 when the job is not waiting."""
        with self._lock:
            try:
                return self._fair_order().index(job) + 1
            except ValueError:
                return 0

    def _fair_order(self) -> list[Job]:
        """Queued runs in the order they will start (call with the lock held): addresses that have had the
        least training time first, oldest first among equals, so a second run (or the next slice of a long
        one) from one address waits behind everyone's first. Runs without an address, as from the CLI or
        tests, are first come first served."""
        now = time.time()
        served = dict(self._served)
        for job_id in self._running:  # the turns in progress count too, for their address and their browser
            j = self._jobs.get(job_id)
            if j is not None and j.client_key is not None and j.slice_started is not None:
                for k in (j.client_key, "owner:" + j.owner_key):
                    served[k] = served.get(k, 0.0) + now - j.slice_started

        def key(j: Job):
            by_address = served.get(j.client_key, 0.0) if j.client_key else 0.0
            # within one address (a classroom behind one router), the browsers that have had the least go first
            by_owner = served.get("owner:" + j.owner_key, 0.0) if j.client_key else 0.0
            return (not j.priority, by_address, by_owner, j.created)

        return sorted(self._queue, key=key)

    def _should_yield(self, job: Job) -> bool:
        """Whether a training run should pause now for another browser's run, of its own address too (a
        classroom behind one router), see fair_slice_s."""
        if job.client_key is None or job.slice_started is None or time.time() - job.slice_started < self.fair_slice_s:
            return False
        with self._lock:
            return any(j.client_key is not None and j.owner_key != job.owner_key for j in self._queue)

    # -- the instructor's powers (the UI checks the key; nothing here knows of one) ----------------------

    def all_jobs(self) -> list[Job]:
        """Every run of the server, oldest first (for the instructor view only)."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created)

    def stop_any(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise JobError(NO_SUCH_RUN)
        return self._stop_job(job)

    def prioritise(self, job_id: str) -> Job:
        """Move a waiting run to the front of the line."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status != QUEUED:
                raise JobError("only a run that is waiting in line can be moved to the front")
            job.priority = True
            self._lock.notify_all()
        return job

    def trust_address(self, client: str) -> None:
        """The room's router: its address gets TRUSTED_FACTOR times the per-address caps."""
        with self._lock:
            self.trusted.add(address_key(client))

    def extend_retention(self, ttl_s: float) -> None:
        """Keep finished runs (and, in the app, labelled sets) at least ttl_s after they end."""
        with self._lock:
            self.ttl_s = max(self.ttl_s, float(ttl_s))

    # -- waits ------------------------------------------------------------------------------------------

    def expected_wait_s(self, job: Job) -> float | None:
        """Seconds until this queued run gets a slot: the runs ahead of it in the fair order and the running
        ones, each taking what is left of its budget (its time limit, else the epochs it has left at its last
        epoch's pace, else a recent run's typical time), slots freeing as they end. 0 when it is not waiting."""
        now = time.time()
        with self._lock:
            order = self._fair_order()
            if job not in order:
                return 0.0
            ahead = order[: order.index(job)]
            running = [self._jobs[i] for i in self._running if i in self._jobs]
            # while this run waits, no other browser's run keeps a slot longer than a fair slice
            sliced = job.client_key is not None and self.fair_slice_s > 0
            free_at = []
            for j in running:
                left = self._left_s(j, now)
                if sliced and j.client_key is not None and j.owner_key != job.owner_key and j.slice_started:
                    left = min(left, max(0.0, self.fair_slice_s - (now - j.slice_started)))
                free_at.append(left)
            turns = [
                min(self._left_s(j, now), self.fair_slice_s + SETUP_S)
                if sliced and j.client_key is not None
                else self._left_s(j, now)
                for j in ahead
            ]
        free_at += [0.0] * max(0, self.max_concurrent - len(free_at))
        for turn in turns:  # each run ahead takes the slot that frees first
            free_at.sort()
            free_at[0] += turn
        return max(0.0, min(free_at))

    def _left_s(self, job: Job, now: float) -> float:
        """Seconds a run still needs on its slot (lock held): its epochs left at its own last epoch's pace, or
        at the pace of recent epochs of other runs, plus its start; never more than its time budget left."""
        epochs = [e for e in job.events if isinstance(e, EpochEnd)]
        done_s = sum(e.seconds for e in epochs)
        if job.status == RUNNING and job.slice_started is not None and not epochs:
            done_s = now - job.slice_started
        cap = min(job.budget_s or math.inf, self.max_run_s or math.inf)
        limit = None if cap == math.inf else cap
        if epochs:
            left = (job.config.train.epochs - epochs[-1].epoch) * epochs[-1].seconds
        else:
            pace = sorted(self._epoch_s)
            per_epoch = pace[len(pace) // 2] if pace else None
            setup = sorted(self._setup_s)
            start = setup[len(setup) // 2] if setup else SETUP_S
            if job.status == RUNNING and job.slice_started is not None:
                start = max(0.0, start - (now - job.slice_started))
            left = start + (job.config.train.epochs * per_epoch if per_epoch else limit or UNKNOWN_RUN_S)
        if limit:
            left = min(left, limit - done_s)
        return max(0.0, left)

    def running_count(self) -> int:
        with self._lock:
            return len(self._running)

    def _minutes_until_free(self) -> int:
        """A rough wait for a place in a full queue: queued runs x a typical run's time / slots."""
        recent = sorted(self._durations)
        typical = recent[len(recent) // 2] if recent else (self.max_run_s or 600) / 4
        return max(1, math.ceil(len(self._queue) * typical / self.max_concurrent / 60))

    # -- the job thread -------------------------------------------------------------------------------

    def _run_job(self, job: Job) -> None:
        result = None
        try:
            while result is None:
                if not self._wait_for_turn(job):
                    return
                last = self._train(job)
                result = self._requeue(job, last) if is_paused(last) else last
        except BaseException as e:  # never let a job take the server down or stay "running" for good: a
            # BaseException (pyo3's PanicException from safetensors under memory pressure) ends it as failed too
            log.exception("run %s failed outside the trainer", job.id[:6])
            result = Failed(
                message=f"training failed unexpectedly ({type(e).__name__}); start again or change the settings",
                detail=f"{type(e).__name__}: {e}",
            )
        finally:
            with self._lock:
                was_running = self._release(job)
                self._lock.notify_all()
        if result is not None and (was_running or job.result is None):
            self._finish(job, result)

    def _wait_for_turn(self, job: Job) -> bool:
        """Wait until this run is first in the fair order and a slot is free, then take the slot. False when
        it was stopped (or the server closed) first: then it is finished here."""
        with self._lock:
            self._lock.wait_for(
                lambda: (
                    job.stop_event.is_set()
                    or self._closed.is_set()
                    or (self._queue and self._fair_order()[0] is job and len(self._running) < self.max_concurrent)
                )
            )
            if job.stop_event.is_set() or self._closed.is_set():
                if job in self._queue:
                    self._queue.remove(job)
                self._lock.notify_all()
                self._finish(job, job.turns.stop())
                return False
            self._queue.remove(job)
            self._running.add(job.id)
            job.status, job.slice_started = RUNNING, time.time()
            job.started = job.started or job.slice_started
            self.store.save(job)
            self._lock.notify_all()
        job._notify()
        return True

    def _release(self, job: Job) -> bool:
        """Free the run's slot and count its turn towards its address's share (lock held). False if it had none."""
        if job.id not in self._running:
            return False
        self._running.discard(job.id)
        if job.slice_started is not None:
            job.slot_s += time.time() - job.slice_started
        if job.client_key is not None and job.slice_started is not None:
            took = time.time() - job.slice_started
            self._served[job.client_key] = self._served.get(job.client_key, 0.0) + took
            k = "owner:" + job.owner_key
            self._served[k] = self._served.get(k, 0.0) + took
        return True

    def _requeue(self, job: Job, paused: Done) -> Done | Failed | None:
        """The run yielded its slot to another address: back into the queue (its checkpoint holds its place)."""
        with self._lock:
            self._release(job)
            job.turns.pause(paused)
            if job.stop_event.is_set() or self._closed.is_set():
                return job.turns.stop()
            job.status = QUEUED
            self._queue.append(job)
            self._lock.notify_all()
        self.store.save(job)
        job._notify()
        why = "lost its cluster worker" if job.note else "paused for another address's run"
        log.info("run %s %s; it goes on at its next turn", job.id[:6], why)
        return None

    def _train(self, job: Job) -> Done | Failed:
        """One turn of a run on a slot: to its end, a Stop, or a pause for another address (see fair_slice_s).
        Its events reach the job through job.turns; its end too, unless it paused."""
        from segdemo.server import zerogpu
        from segdemo.training.trainer import Trainer

        turns, resume = job.turns, job.paused is not None

        def should_pause() -> bool:
            return self._should_yield(job)

        if self.cluster is not None:  # Ray decides where; this manager decided who and when
            last: Done | Failed | None = self.cluster.train_turn(job, turns, resume=resume, should_pause=should_pause)
        elif self._trainer_factory is not None:
            fake = self._trainer_factory(job.config, job.run_dir, splits=job.splits, should_stop=job.stop_event.is_set)
            fake.add_callback(turns.feed)
            last = fake.run()
        elif zerogpu.chunk_steps():  # ZeroGPU lends the GPU per call: train as a chain of short calls
            last = zerogpu.train_in_chunks(
                job.config,
                job.run_dir,
                splits=job.splits,
                resume=resume,
                stop=job.stop_event,
                should_pause=should_pause,
                turns=turns,
                memory_budget=self.memory_budget,
                context=job.context,
            )
        else:
            trainer = Trainer(
                job.config,
                job.run_dir,
                splits=job.splits,
                should_stop=job.stop_event.is_set,
                memory_budget=self.memory_budget,
                resume=resume,
                should_pause=should_pause,
            )
            last = turns.play(trainer.events())
        if last is None:
            last = Failed(message="training ended without a result; start the run again", detail="no Done or Failed")
        if not is_paused(last):
            job.splits = None  # free the images; the event history keeps the previews
            turns.end(last)
        return last

    def _from_trainer(self, job: Job, ev: Event) -> None:
        """The run's events as job.turns lets them through (one run: one Started, no turn's pause)."""
        if isinstance(ev, EpochEnd):
            self._epoch_s.append(ev.seconds)
            if job.slice_started is not None and job.last(EpochEnd) is None:
                self._setup_s.append(max(0.0, time.time() - job.slice_started - ev.seconds))
        job._append(ev)
        if isinstance(ev, EpochEnd) and ev.previews:  # after the page has the epoch: drawing takes ~20-50 ms
            _save_filmstrip_frame(job, ev)

    def _finish(self, job: Job, result: Done | Failed) -> None:
        job.turns.end(result)  # the watcher has it already when the turn sent it
        with job._cond:
            job.result = result
            job.finished = time.time()
            if job.started is not None:
                self._durations.append(job.finished - job.started)
            job.status = _status_of(result)
            job._cond.notify_all()
        self.store.save(job)
        log.info("run %s %s: %s", job.id[:6], job.status, job.message)

    # -- expiry ------------------------------------------------------------------------------------------

    def cleanup_expired(self, now: float | None = None) -> int:
        """Delete runs that ended more than ttl_s ago (never a queued or running one), and stray folders
        in root_dir older than ttl_s that no job owns. Returns how many runs were removed."""
        now = time.time() if now is None else now
        removed = 0
        with self._lock:
            for job in list(self._jobs.values()):
                if job.status in FINISHED and now - (job.finished or job.created) > self.ttl_s:
                    self._forget(job)
                    removed += 1
            known = set(self._jobs)
        self.store.sweep(known, self.ttl_s, now)
        return removed

    def _forget(self, job: Job) -> None:
        """Drop a finished job and its folder (call with the lock held)."""
        self._jobs.pop(job.id, None)
        self.store.delete(job.run_dir)
        for fn in self.on_forget:  # e.g. the UI deletes the copies it handed out for download
            try:
                fn(job)
            except Exception:
                log.exception("an on_forget hook failed for run %s", job.id[:6])

    def _reap_loop(self) -> None:
        period = min(300.0, max(1.0, self.ttl_s / 4))
        while not self._closed.wait(period):
            try:
                self.cleanup_expired()
            except Exception:  # a reaper hiccup must never kill the thread
                log.exception("expiring old runs failed")

    def close(self, timeout: float = 10.0) -> None:
        """Stop every run and the reaper; wait a little for threads (for tests and shutdown)."""
        self._closed.set()
        with self._lock:
            jobs = list(self._jobs.values())
            for j in jobs:
                j.stop_event.set()
            self._lock.notify_all()
        deadline = time.time() + timeout
        for j in jobs:
            if j.thread is not None:
                j.thread.join(max(0.0, deadline - time.time()))

    # -- restart -----------------------------------------------------------------------------------------

    def _load_existing(self) -> list[Job]:
        """Re-register the runs found in root_dir (persistent storage after a restart), without previews. A run
        that was waiting or training goes back in line (resume_on_restart; unless it is older than ttl_s: then
        it ends as stopped) and, where it had saved a resumable checkpoint, goes on from its last complete epoch;
        the ones to start are returned."""
        again = []
        for r in self.store.load():
            job = Job(r.id, r.owner_key, r.config, r.run_dir, client_key=r.client_key)
            job.created, job.started, job.finished = r.created, r.started, r.finished
            ended = self.cluster.remote_end(r.run_dir) if self.cluster is not None and r.was_active else None
            if ended is not None:  # it ended on the cluster while this app was away
                r.result, r.was_active = ended, False
            if r.was_active and self.resume_on_restart and time.time() - r.created < self.ttl_s:
                epochs = [e for e in r.events if isinstance(e, EpochEnd)]
                if (r.run_dir / "last.safetensors").is_file() and epochs:
                    best = max(epochs, key=lambda e: e.miou)
                    job.turns.pause(
                        Done(
                            reason=PAUSED,
                            epochs_done=epochs[-1].epoch,
                            best_miou=best.miou,
                            best_epoch=best.epoch,
                            best_checkpoint=None,
                            last_checkpoint=None,
                            seconds=0.0,
                        )
                    )
                job.events = list(r.events)
                job.status = QUEUED
                data = r.run_dir / "data"
                if data.is_dir() and not (data / ZIP_MARKER).is_file():
                    shutil.rmtree(data, ignore_errors=True)  # an unpacking the restart cut short: ours, done again
                self._queue.append(job)
                again.append(job)
                log.info(
                    "run %s was %s when the server stopped: back in line%s",
                    job.id[:6],
                    "training" if r.started else "waiting",
                    f", resuming after epoch {job.paused.epochs_done}" if job.paused else "",
                )
            else:
                job.result, job.status = r.result, _status_of(r.result)
                job.events = [*r.events, r.result]
                if ended is not None and self.cluster is not None:
                    self.store.save(job)
                    self.cluster.release(job.id)
            self._jobs[job.id] = job
        return again

    def _start_thread(self, job: Job) -> None:
        job.turns.watcher = functools.partial(self._from_trainer, job)
        job.turns.started = job.last(Started) is not None  # a run restored after a restart has its Started
        job.thread = threading.Thread(target=self._run_job, args=(job,), name=f"segdemo-job-{job.id[:6]}", daemon=True)
        job.thread.start()


def address_key(client: str) -> str:
    """How runs, the fair order and the trusted set know an address: a hash, never the address itself."""
    return hashlib.sha256(client.encode()).hexdigest()


def _save_filmstrip_frame(job: Job, ev: EpochEnd) -> None:
    """Keep this epoch's filmstrip as a small picture in the run folder (the job keeps only the latest previews
    in memory), for the run's animated GIF. A frame that cannot be written costs the GIF a frame, never the run."""
    from segdemo.core import filmstrip

    started = job.last(Started)
    if started is None:
        return
    try:
        classes = ClassSet(tuple(started.class_names), tuple(tuple(c) for c in started.class_colors))
        filmstrip.save_frame(job.run_dir, ev, classes)
    except Exception:
        log.warning("could not save run %s's filmstrip frame for epoch %d", job.id[:6], ev.epoch, exc_info=True)


def _status_of(result: Done | Failed) -> str:
    if isinstance(result, Failed):
        return FAILED
    return STOPPED if result.reason == "stopped" else DONE
