"""The run store: run folders under one root, their job.json records, what survives a server restart,
and sweeping old folders. The queue (segdemo/server/jobs.py) decides WHEN a run expires; this decides what is on disk.

A run folder is `root/<run id>/`; job.json in it holds enough to list the run again after a restart
(owner hash, status, times, config, result), never the owner's token. Only folders that look like ours
(a run-id name and a job record, or nothing, inside) are ever deleted.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segdemo.atomic import replace_file
from segdemo.core.config import RunConfig
from segdemo.data.base import ClassSet
from segdemo.events import Done, EpochEnd, Event, Failed, Started, epoch_from_record

log = logging.getLogger(__name__)
RECORD = "job.json"
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")  # secrets.token_urlsafe(16)


@dataclass
class StoredRun:
    """A run read back from its folder after a restart (its events rebuilt, without previews)."""

    id: str
    owner_key: str
    config: RunConfig
    run_dir: Path
    created: float
    started: float | None
    finished: float
    result: Done | Failed
    events: list[Event] = field(default_factory=list)
    was_active: bool = False  # it was waiting or training when the server went down
    client_key: str | None = None


class RunStore:
    def __init__(self, root: str | Path, persist: bool | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.persist = (not under_tmp(self.root)) if persist is None else persist  # survives a restart?

    def new_folder(self, run_id: str) -> Path:
        d = self.root / run_id
        d.mkdir(parents=True, mode=0o700)
        return d

    def save(self, run: Any) -> None:
        """Write run's job.json (a Job: id, owner_key, status, times, config, result)."""
        doc = {
            "id": run.id,
            "owner_key": run.owner_key,
            "client_key": run.client_key,
            "status": run.status,
            "created": run.created,
            "started": run.started,
            "finished": run.finished,
            "slot_s": getattr(run, "slot_s", None),
            "config": run.config.to_dict(),
            "result": result_doc(run.result),
        }
        try:
            replace_file(run.run_dir / RECORD, json.dumps(doc).encode(), fsync=False)
        except OSError:
            log.warning(
                "could not write %s; this run will not be listed after a restart", run.run_dir / RECORD, exc_info=True
            )  # a convenience for restarts: the run itself goes on

    def load(self) -> list[StoredRun]:
        """Every run with a readable record. One that was queued or training when the server went down comes
        back stopped (with its best checkpoint) or failed."""
        runs = []
        for rec_path in self.root.glob(f"*/{RECORD}"):
            try:
                doc = json.loads(rec_path.read_text())
                config = RunConfig.from_stored(doc["config"])
                run_id, owner_key = doc["id"], doc["owner_key"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            run_dir = rec_path.parent
            if run_id != run_dir.name:
                continue
            events = _rebuild_events(run_dir)
            runs.append(
                StoredRun(
                    run_id,
                    owner_key,
                    config,
                    run_dir,
                    created=float(doc.get("created") or rec_path.stat().st_mtime),
                    started=doc.get("started"),
                    finished=doc.get("finished") or rec_path.stat().st_mtime,
                    result=_result_from(doc.get("result") or {}, run_dir, events),
                    events=events,
                    was_active=not doc.get("result"),
                    client_key=doc.get("client_key") if isinstance(doc.get("client_key"), str) else None,
                )
            )
        return runs

    def delete(self, run_dir: Path) -> None:
        shutil.rmtree(run_dir, ignore_errors=True)

    def sweep(self, known: set[str], older_than_s: float, now: float) -> None:
        """Delete folders no run owns whose last change is older than older_than_s (only ones we made)."""
        try:
            entries = list(self.root.iterdir())
        except OSError:
            return
        for d in entries:
            if d.name not in known and _looks_like_run_folder(d):
                try:
                    if now - d.stat().st_mtime > older_than_s:
                        shutil.rmtree(d, ignore_errors=True)
                except OSError:
                    pass


def default_root_dir() -> tuple[Path, bool, bool]:
    """(root folder for run folders, whether it survives a restart, whether this call created it fresh).

    SEGDEMO_RUNS_DIR if set; else /data/segdemo-runs when /data exists and is writable (persistent
    storage on Hugging Face Spaces); else segdemo/runs in the user's data folder ($XDG_DATA_HOME, else
    ~/.local/share), so a laptop's workshop survives a restart; else a fresh temp folder, which a restart
    loses. Only a fresh temp folder is ever deleted whole (at exit): a folder the host named may hold things
    the app never made.
    """
    env = os.environ.get("SEGDEMO_RUNS_DIR")
    if env:
        p = Path(env)
        p.mkdir(parents=True, exist_ok=True)
        return p, not under_tmp(p), False
    data = Path("/data")
    if data.is_dir() and os.access(data, os.W_OK):
        p = data / "segdemo-runs"
        try:
            p.mkdir(parents=True, exist_ok=True)
            return p, True, False
        except OSError:
            pass
    home = os.environ.get("XDG_DATA_HOME") or (Path.home() / ".local" / "share" if Path.home().is_dir() else None)
    if home:
        p = Path(home) / "segdemo" / "runs"
        try:
            p.mkdir(parents=True, exist_ok=True, mode=0o700)
            if os.access(p, os.W_OK):
                return p, not under_tmp(p), False
        except OSError:
            pass
    return Path(tempfile.mkdtemp(prefix="segdemo-runs-")), False, True


def under_tmp(p: Path) -> bool:
    try:
        p.resolve().relative_to(Path(tempfile.gettempdir()).resolve())
        return True
    except ValueError:
        return False


def _looks_like_run_folder(d: Path) -> bool:
    """Only folders we made are ever swept: a run-id name and a job record (or nothing at all) inside."""
    try:
        return d.is_dir() and bool(_RUN_ID.match(d.name)) and ((d / RECORD).is_file() or not any(d.iterdir()))
    except OSError:
        return False


def result_doc(r: Done | Failed | None) -> dict | None:
    """A run's end as JSON (job.json's result; a cluster run's remote_end.json too)."""
    if isinstance(r, Done):
        return {"type": "done", **r.__dict__}
    if isinstance(r, Failed):
        return {"type": "failed", **r.__dict__}
    return None


def result_from_doc(doc: dict) -> Done | Failed | None:
    """result_doc's JSON back as the run's end; None when it holds none."""
    res = dict(doc)
    kind = res.pop("type", None)
    if kind == "done":
        return Done(**res)
    if kind == "failed":
        return Failed(**res)
    return None


def _result_from(res: dict, run_dir: Path, events: list[Event]) -> Done | Failed:
    ended = result_from_doc(res)
    if ended is not None:
        return ended
    best = run_dir / "best.safetensors"  # it never ended: it was waiting or training at the restart
    if best.is_file():
        return Done(
            reason="stopped",
            epochs_done=sum(isinstance(e, EpochEnd) for e in events),
            best_miou=None,
            best_epoch=None,
            best_checkpoint=str(best),
            last_checkpoint=None,
            seconds=0.0,
        )
    return Failed(message="the server restarted while this run was waiting or training; start it again")


def _rebuild_events(run_dir: Path) -> list[Event]:
    """Started + one EpochEnd per line of metrics.jsonl, without previews."""
    events: list[Event] = []
    best = run_dir / "best.safetensors"
    try:
        from segdemo.core.checkpoint import read_meta

        meta = read_meta(best)
        classes = ClassSet.from_dict(meta["classes"])
        cfg = RunConfig.from_stored(meta["config"])
        events.append(
            Started(
                run_dir=str(run_dir),
                device="?",
                precision="(restored after a server restart)",
                epochs=cfg.train.epochs,
                start_epoch=1,
                n_train=0,
                n_val=0,
                class_names=list(classes.names),
                class_colors=list(classes.colors),
                parameters=0,
            )
        )
    except Exception:  # no epoch finished (no best checkpoint), or one we cannot read: no history then
        if best.is_file():
            log.warning("could not read %s to restore its run's history", best, exc_info=True)
        return events
    best_miou = -math.inf
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            r = json.loads(line)
            # a run's own choice where it recorded one (a small split's rule is not the highest val mIoU)
            is_best = bool(r["is_best"]) if "is_best" in r else r["miou"] > best_miou
            best_miou = max(best_miou, r["miou"])
            events.append(epoch_from_record(r, epochs=cfg.train.epochs, is_best=is_best))
        except (ValueError, KeyError, TypeError):
            continue
    return events
