"""Cluster mode (issue 25): runs submitted through the app train on a real local Ray cluster, started here.

A head node that trains nothing (0 CPUs) and one worker node of 1 CPU, both `ray start` processes on this
machine: a run trains in a Ray worker process, never the app's; its epochs stream to the page; Stop reaches it;
killing its worker mid-run sends it back in line and it resumes from its checkpoint; an app restarted while a
run trained finds how it ended; an unreachable cluster ends a run with a sentence. Skipped where Ray is not
installed (`pip install 'segdemo[cluster]'`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="cluster mode needs Ray: pip install 'segdemo[cluster]'")

from segdemo.events import EpochEnd  # noqa: E402
from segdemo.server.cluster import REMOTE_END, Cluster  # noqa: E402
from segdemo.server.jobs import DONE, FAILED, STOPPED, JobManager  # noqa: E402
from tests.conftest import api_session, free_port, tiny_config, tiny_train_args  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def _wait(cond, timeout: float, step: float = 0.2) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


def _ray(*args: str) -> None:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([RAY, *args], check=True, env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def cluster_address(tmp_path_factory):
    """A real local Ray cluster: a head that trains nothing and one 1-CPU worker node. Stopped after the module
    (`ray stop` ends every Ray process of this machine's user: CI runs nothing else of Ray)."""
    gcs, client = free_port(), free_port()
    try:
        _ray(
            "start", "--head", "--num-cpus=0", f"--port={gcs}", f"--ray-client-server-port={client}",
            "--include-dashboard=false", "--disable-usage-stats",
        )  # fmt: skip
        _ray("start", f"--address=127.0.0.1:{gcs}", "--num-cpus=1", "--disable-usage-stats")
        yield f"ray://127.0.0.1:{client}"
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def cluster(cluster_address):
    c = Cluster(cluster_address)
    assert c.slots() == 1  # the worker node's one CPU, one CPU a run
    yield c
    c.close()


def _metrics(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()] if path.is_file() else []


def test_a_run_from_the_app_trains_on_a_worker_streams_and_survives_losing_it(cluster, tmp_path):
    from segdemo.ui import build_demo, launch

    jobs = JobManager(tmp_path / "runs", max_concurrent=cluster.slots(), reaper=False, cluster=cluster)
    demo = build_demo(jobs, cache_dir=tmp_path / "cache", default_checkpoint=tmp_path / "none.safetensors")
    port = free_port()
    launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        c, token = api_session(f"http://127.0.0.1:{port}/")
        run_id, _ = c.predict(token, **tiny_train_args(epochs=8, train_images=96), api_name="/train")
        statuses: list[str] = []
        watcher = threading.Thread(
            target=lambda: statuses.extend(out[0] for out in c.submit(token, run_id, api_name="/watch"))
        )
        watcher.start()
        info = {}

        def at_epoch(n: int) -> bool:
            nonlocal info
            info = c.predict(token, run_id, api_name="/run_info")
            return len(info["epochs"]) >= n and info["worker"] is not None

        assert _wait(lambda: at_epoch(2), 240, 0.5), info
        worker = info["worker"]["pid"]
        assert worker != os.getpid()  # a Ray worker process trains it, not the app's
        os.kill(worker, signal.SIGKILL)  # the worker dies mid-run
        assert _wait(lambda: c.predict(token, run_id, api_name="/run_info")["status"] == "done", 300, 0.5)
        watcher.join(60)
        info = c.predict(token, run_id, api_name="/run_info")
        assert "lost after epoch" in info["note"], info["note"]
        run_dir = jobs.get(token, run_id).run_dir
        assert _metrics(run_dir) == list(range(1, 9))  # one line per epoch: no gap, no duplicate
        assert [e["epoch"] for e in info["epochs"]] == list(range(1, 9))
        assert any("on the training cluster, worker process" in s for s in statuses)
        assert "Finished" in statuses[-1]
        # Stop reaches a run on the cluster at once, and frees its worker
        run_id, _ = c.predict(token, **tiny_train_args(epochs=100, train_images=96), api_name="/train")
        assert _wait(lambda: len(c.predict(token, run_id, api_name="/run_info")["epochs"]) >= 1, 240, 0.5)
        t = time.time()
        c.predict(token, run_id, api_name="/stop")
        assert _wait(lambda: c.predict(token, run_id, api_name="/run_info")["status"] == STOPPED, 30, 0.1)
        assert time.time() - t < 10
        assert (jobs.get(token, run_id).run_dir / "best.safetensors").is_file()
    finally:
        demo.close()
        jobs.close()


def test_fair_turns_pause_and_resume_on_the_cluster(cluster, tmp_path):
    """One slot, two addresses: the long run yields after its fair slice, the other trains, the first goes on
    where it paused, every epoch logged once."""
    jobs = JobManager(tmp_path / "runs", max_concurrent=1, reaper=False, cluster=cluster, fair_slice_s=3)
    try:
        long = jobs.submit("alice", tiny_config(epochs=10), client="10.0.0.1")
        assert _wait(lambda: long.last(EpochEnd) is not None, 240)
        short = jobs.submit("bob", tiny_config(epochs=1), client="10.0.0.2")
        assert _wait(lambda: not long.is_active and not short.is_active, 400)
        assert long.status == DONE and short.status == DONE
        assert short.finished < long.finished and long.started < short.started
        assert _metrics(long.run_dir) == list(range(1, 11))
        assert [e.epoch for e in long.events if isinstance(e, EpochEnd)] == list(range(1, 11))
    finally:
        jobs.close()


def test_an_app_restarted_mid_run_finds_how_the_run_ended(cluster_address, tmp_path):
    """kill -9 the app while its run trains on the cluster: the run goes on there, and the app started again
    on the same folder lists it as finished, with every epoch."""
    runs = tmp_path / "runs"
    script = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from tests.conftest import tiny_config
from segdemo.server.cluster import Cluster
from segdemo.server.jobs import JobManager
jm = JobManager({str(runs)!r}, max_concurrent=1, reaper=False, persist=True, cluster=Cluster({cluster_address!r}))
job = jm.submit("alice", tiny_config(epochs=6), client="10.0.0.1")
print(job.id, flush=True)
time.sleep(600)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        run_id = proc.stdout.readline().strip()
        assert _wait(lambda: len(_metrics(runs / run_id)) >= 1, 240)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert _wait(lambda: (runs / run_id / REMOTE_END).is_file(), 240)  # it finished without its app
    cluster = Cluster(cluster_address)
    jobs = JobManager(runs, max_concurrent=1, reaper=False, persist=True, cluster=cluster)
    try:
        job = jobs.get("alice", run_id)
        assert job.status == DONE and "finished after 6 epoch(s)" in job.message
        assert [e.epoch for e in job.events if isinstance(e, EpochEnd)] == list(range(1, 7))
    finally:
        jobs.close()


def test_an_unreachable_cluster_ends_the_run_with_a_sentence(tmp_path):
    cluster = Cluster(f"ray://127.0.0.1:{free_port()}")  # nothing listens there
    jobs = JobManager(tmp_path / "runs", max_concurrent=1, reaper=False, cluster=cluster)
    try:
        job = jobs.submit("alice", tiny_config(epochs=1))
        assert _wait(lambda: not job.is_active, 120)
        assert job.status == FAILED and "training cluster cannot be reached" in job.message
    finally:
        jobs.close()
