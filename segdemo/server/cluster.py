"""Cluster mode: each training run executes on a Ray cluster while the app stays the front door.

With SEGDEMO_RAY_ADDRESS (or `segdemo app --cluster ADDRESS`) the job manager (segdemo/server/jobs.py) keeps
everything it decides today: owner tokens, limits, the fair order and who trains next, with as many slots as
the cluster holds runs. Ray decides where: each turn of a run is one Ray actor (RemoteRun) that runs segdemo's
own Trainer, with the resources the operator declares per run (SEGDEMO_RAY_RUN_CPUS, SEGDEMO_RAY_RUN_GPUS).
Nothing a visitor sends picks a node, a resource or a path, and the code the cluster runs is this app's own
segdemo package, shipped with the connection (Ray's py_modules), never code from a request.

The run folder stays where the app keeps it, on a path every node sees the same (SEGDEMO_RUNS_DIR on a shared
mount), rather than being pulled back when the run ends: the trainer writes its last checkpoint there every
epoch, so a worker killed mid-run leaves it for the next worker to resume from, and the app reads checkpoints
and metrics as they come.

Events: the actor keeps its trainer's events and the app polls them (every POLL_S) into the run's Turns, so the
page sees one run. Stop and the fair share's pause are actor calls that the trainer reads between batches.
Faults: a lost worker sends the run back in line with a note, to resume from its last checkpoint on another
worker (at most MAX_LOSSES times); a cluster that cannot be reached ends the run with a sentence, and every
call has a timeout, so nothing waits for ever. Actors are detached and named after their run: when the app
restarts, a run still training is attached again, and one that ended meanwhile left its end in its folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segdemo.atomic import replace_file
from segdemo.errors import UserError
from segdemo.events import Done, EpochEnd, Event, Failed, Progress
from segdemo.server.runstore import result_doc, result_from_doc
from segdemo.training.turns import PAUSED, Turns

if TYPE_CHECKING:
    from segdemo.core.config import RunConfig

log = logging.getLogger(__name__)

ADDRESS_ENV = "SEGDEMO_RAY_ADDRESS"  # ray://HEAD:10001 (Ray Client: the app outlives a lost head) or HEAD:6379
NAMESPACE = "segdemo"  # the app's actors, apart from whatever else the cluster runs
POLL_S = 0.5  # the longest a Stop or a new epoch waits to reach the other side
CALL_TIMEOUT_S = 60.0  # one call to the cluster (a poll waits POLL_S): beyond this it counts as gone
MAX_LOSSES = 3  # workers a run may lose before it ends as failed
REMOTE_END = "remote_end.json"  # a run's end, written by its actor into the run folder (read after a restart)
ORPHAN_S = 120.0  # an actor whose run ended and that nobody polls for this long exits by itself
_connected_to: list[str] = []  # the address this process's Ray connection is to (Ray keeps one per process)
INSTALL = "cluster mode needs Ray on the app's machine and every node: pip install 'segdemo[cluster]'"


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(INSTALL) from None
    return ray


class RemoteRun:
    """One turn of a run, on a Ray worker (the class becomes a Ray actor in Cluster.connect). Its methods run
    in the actor's threads: train() holds one while poll(), stop() and pause() answer beside it."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.end: Done | Failed | None = None
        self.cond = threading.Condition()
        self.stopping = threading.Event()
        self.pausing = threading.Event()
        self.polled = time.monotonic()

    def where(self) -> dict[str, Any]:
        """Which process and node train this run (the page and the tests show it is not the app's)."""
        import ray

        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}

    def train(self, config: RunConfig, run_dir: str, resume: bool) -> None:
        from segdemo.training.trainer import Trainer

        trainer = Trainer(
            config, run_dir, should_stop=self.stopping.is_set, resume=resume, should_pause=self.pausing.is_set
        )
        end: Done | Failed | None = None
        for ev in trainer.events():
            with self.cond:
                if isinstance(ev, Progress) and self.events and isinstance(self.events[-1], Progress):
                    self.events[-1] = ev  # the page shows the newest only: the queue stays one per epoch
                else:
                    self.events.append(ev)
                self.cond.notify_all()
            if isinstance(ev, Done | Failed):
                end = ev
        end = end or Failed(message="training ended without a result; start the run again")
        if not (isinstance(end, Done) and end.reason == PAUSED):  # a restarted app reads how the run ended
            replace_file(Path(run_dir) / REMOTE_END, json.dumps(result_doc(end)).encode())
        with self.cond:
            self.end = end
            self.polled = time.monotonic()
            self.cond.notify_all()
        threading.Thread(target=self._exit_when_orphaned, daemon=True).start()

    def poll(self, since: int, timeout: float) -> tuple[list[Event], bool]:
        """Events from index `since`, waiting up to `timeout` for one; and whether the run's turn has ended."""
        with self.cond:
            self.polled = time.monotonic()
            self.cond.wait_for(lambda: len(self.events) > since or self.end is not None, timeout)
            return list(self.events[since:]), self.end is not None

    def stop(self) -> None:
        self.stopping.set()

    def pause(self) -> None:
        self.pausing.set()

    def _exit_when_orphaned(self) -> None:
        while time.monotonic() - self.polled < ORPHAN_S:
            time.sleep(5)
        os._exit(0)  # nobody collects this detached actor's end (the app is gone): free its worker


@dataclasses.dataclass
class Cluster:
    """The app's connection to a Ray cluster and what each run asks of it (operator settings only)."""

    address: str
    run_cpus: float = 1.0
    run_gpus: float = 0.0
    _actor_class: Any = None
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @classmethod
    def from_env(cls, address: str | None = None) -> Cluster | None:
        """SEGDEMO_RAY_ADDRESS (or the address given) with SEGDEMO_RAY_RUN_CPUS (default 1) and
        SEGDEMO_RAY_RUN_GPUS (default 0; a fraction shares a GPU); None without an address: runs stay threads."""
        address = address or os.environ.get(ADDRESS_ENV)
        if not address:
            return None
        _ray()  # a clear sentence now, not at the first Train click
        cpus = float(os.environ.get("SEGDEMO_RAY_RUN_CPUS") or 1)
        gpus = float(os.environ.get("SEGDEMO_RAY_RUN_GPUS") or 0)
        return cls(address, cpus, gpus)

    def connect(self) -> Any:
        """Ray, connected (once per process; again after a lost connection)."""
        ray = _ray()
        with self._lock:
            if ray.is_initialized() and _connected_to != [self.address]:
                ray.shutdown()  # another cluster's connection (one process, one Ray connection)
            if not ray.is_initialized():
                import segdemo

                package = str(Path(segdemo.__file__).parent)
                ray.init(
                    address=self.address,
                    namespace=NAMESPACE,
                    log_to_driver=False,
                    runtime_env={"py_modules": [package], "excludes": ["__pycache__", "*.pyc"]},
                )
                _connected_to[:] = [self.address]
            if self._actor_class is None:
                self._actor_class = ray.remote(RemoteRun)
        return ray

    def slots(self) -> int:
        """Runs the cluster holds at once with each run's resources (the job manager's slots)."""
        res = self.connect().cluster_resources()
        fits = [res.get("CPU", 0.0) / self.run_cpus] if self.run_cpus else []
        if self.run_gpus:
            fits.append(res.get("GPU", 0.0) / self.run_gpus)
        return max(1, int(min(fits) if fits else 1))

    def close(self) -> None:
        ray = _ray()
        if ray.is_initialized():
            ray.shutdown()

    # -- one turn of a run ---------------------------------------------------------------------------

    def train_turn(self, job: Any, turns: Turns, *, resume: bool, should_pause: Any) -> Done | Failed:
        """One turn of `job` on the cluster, its events through `turns`: its Done or Failed (unsent), or
        Done("paused") when it yielded its slot or lost its worker (the job manager puts it back in line)."""
        try:
            ray = self.connect()
        except UserError:
            raise
        except Exception as e:
            return self._unreachable(e)
        actor = None
        try:
            actor, attached = self._actor_for(ray, job)
            if attached:
                log.info("run %s: attached again to its actor on the cluster", job.id[:6])
            else:
                resume = resume and (job.run_dir / "last.safetensors").is_file()
                actor.train.remote(job.config, str(job.run_dir), resume)
            job.where = ray.get(actor.where.remote(), timeout=CALL_TIMEOUT_S)
            return self._follow(ray, actor, job, turns, should_pause)
        except ray.exceptions.RayActorError as e:
            return self._lost(job, e)
        except Exception as e:  # a timeout (no worker free, a cluster gone), a lost connection
            self._kill(ray, actor)  # before _unreachable drops the connection
            return self._unreachable(e)
        finally:
            job.where = None
            self._kill(ray, actor)

    @staticmethod
    def _kill(ray: Any, actor: Any) -> None:
        """End a run's actor: never left behind, as a detached actor still waiting for a worker would start the
        run later, unwatched."""
        if actor is not None:
            try:
                ray.kill(actor)
            except Exception:
                pass  # gone with its worker or its cluster

    def _actor_for(self, ray: Any, job: Any) -> tuple[Any, bool]:
        """The run's actor: the one a previous app left training (after a restart), else a new one."""
        name = f"run-{job.id}"
        try:
            return ray.get_actor(name, namespace=NAMESPACE), True
        except ValueError:
            pass
        actor = self._actor_class.options(
            name=name,
            namespace=NAMESPACE,
            lifetime="detached",  # a run goes on while the app restarts (see REMOTE_END)
            num_cpus=self.run_cpus,
            num_gpus=self.run_gpus,
            max_concurrency=4,  # train() holds a thread; poll, stop and pause answer beside it
            max_restarts=0,  # a lost worker is the job manager's to handle: it resumes from the checkpoint
        ).remote()
        return actor, False

    def _follow(self, ray: Any, actor: Any, job: Any, turns: Turns, should_pause: Any) -> Done | Failed:
        """Pass the actor's events through the run's turns until its turn ends; send Stop and pause on."""
        seen = max((e.epoch for e in job.events if isinstance(e, EpochEnd)), default=0)
        since, stop_sent, pause_sent, end = 0, False, False, None
        while True:
            if job.stop_event.is_set() and not stop_sent:
                actor.stop.remote()
                stop_sent = True
            if not pause_sent and not stop_sent and should_pause():
                actor.pause.remote()
                pause_sent = True
            events, over = ray.get(actor.poll.remote(since, POLL_S), timeout=CALL_TIMEOUT_S)
            since += len(events)
            for ev in events:
                if isinstance(ev, EpochEnd) and ev.epoch <= seen:
                    continue  # attached after a restart: the app has this epoch from the run folder
                if isinstance(ev, Done | Failed):
                    end = ev
                turns.feed(ev)
            if over:
                return end or Failed(message="training ended without a result; start the run again")

    def _lost(self, job: Any, e: Exception) -> Done | Failed:
        job.losses += 1
        epochs = [ev for ev in job.events if isinstance(ev, EpochEnd)]
        done = epochs[-1].epoch if epochs else 0
        log.warning("run %s lost its worker after epoch %d (%s)", job.id[:6], done, type(e).__name__)
        if job.losses > MAX_LOSSES:
            return Failed(
                message=f"its worker on the training cluster was lost {job.losses} times; the last checkpoint is "
                "kept: press Train again later, or ask the host to check the cluster's nodes",
                detail=f"{type(e).__name__}: {e}",
            )
        job.note = (
            f"Its worker on the training cluster was lost after epoch {done}; it goes on from its last checkpoint "
            "on another worker."
        )
        best = [ev for ev in epochs if ev.is_best]
        return Done(
            reason=PAUSED,
            epochs_done=done,
            best_miou=best[-1].miou if best else None,
            best_epoch=best[-1].epoch if best else None,
            best_checkpoint=None,
            last_checkpoint=None,
            seconds=0.0,
        )

    def _unreachable(self, e: Exception) -> Failed:
        log.warning("the training cluster at %s cannot be reached: %s: %s", self.address, type(e).__name__, e)
        try:  # the next run connects afresh (a Ray Client connection does not come back by itself)
            self.close()
        except Exception:
            pass
        return Failed(
            message="the training cluster cannot be reached, or has no free worker, just now, so this run stopped "
            "(a checkpoint it saved is kept); press Train again in a few minutes, or tell the host",
            detail=f"{type(e).__name__}: {e}",
        )

    def release(self, run_id: str) -> None:
        """Free the worker of a run that ended while the app was away (its actor waits to be collected)."""
        try:
            ray = self.connect()
            ray.kill(ray.get_actor(f"run-{run_id}", namespace=NAMESPACE))
        except Exception:
            pass  # gone already, or the cluster is: its actor exits by itself (ORPHAN_S)

    def remote_end(self, run_dir: Path) -> Done | Failed | None:
        """How a run ended on the cluster while the app was away (its actor wrote it), else None."""
        try:
            return result_from_doc(json.loads((run_dir / REMOTE_END).read_text()))
        except (OSError, ValueError, TypeError):
            return None
