"""ZeroGPU mode on a CPU: detection, the decorated predict, and the chunked training path that a ZeroGPU Space
runs (here the real `spaces` decorator is a no-op, so it is the same code), through the real job manager."""

from __future__ import annotations

import json
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

spaces = pytest.importorskip("spaces", reason="ZeroGPU's package: pip install -r requirements-dev.txt")
from spaces.config import Config as SpacesConfig  # noqa: E402
from spaces.config import boolean as spaces_boolean  # noqa: E402
from spaces.utils import gradio_request_var  # noqa: E402
from spaces.zero.gradio import error as spaces_error  # noqa: E402

from segdemo.core.checkpoint import load_checkpoint  # noqa: E402
from segdemo.core.predict import Predictor  # noqa: E402
from segdemo.data.base import DataError  # noqa: E402
from segdemo.data.builtin import open_builtin  # noqa: E402
from segdemo.events import Done, EpochEnd, Progress, Started  # noqa: E402
from segdemo.server import zerogpu  # noqa: E402
from segdemo.server.jobs import DONE, FAILED, STOPPED, JobManager  # noqa: E402
from segdemo.training.trainer import Trainer  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OWNER = "owner-a"
# what spaces raises when a visitor's daily quota is spent (spaces/zero/client.py, schedule())
QUOTA_TEXT = "You have exceeded your free ZeroGPU quota (60s requested vs. 12s left). Try again in 13:45:10. "


def quota_error() -> gr.Error:
    return spaces_error("ZeroGPU quota exceeded", QUOTA_TEXT)


# -- detection and the decorator ---------------------------------------------------------------------------


def test_detection_is_off_here_and_on_with_the_variable_spaces_reads():
    assert not zerogpu.zero_gpu() and not SpacesConfig.zero_gpu
    for value in ("true", "True", "1", "t", "false", "0", "yes", ""):
        env = {"SPACES_ZERO_GPU": value}
        assert zerogpu.zero_gpu(env) == spaces_boolean(value), value
    assert zerogpu.zero_gpu({"SPACES_ZERO_GPU": "true"}) and not zerogpu.zero_gpu({})
    # training runs in chunks on ZeroGPU, or wherever SEGDEMO_TRAIN_CHUNK_STEPS asks for it
    assert zerogpu.chunk_steps({}) is None
    assert zerogpu.chunk_steps({"SPACES_ZERO_GPU": "true"}) == zerogpu.DEFAULT_CHUNK_STEPS
    assert zerogpu.chunk_steps({"SEGDEMO_TRAIN_CHUNK_STEPS": "7"}) == 7


def test_the_decorator_is_spaces_gpu_which_leaves_functions_alone_off_zerogpu():
    assert zerogpu.spaces is spaces  # the real package, not a stand-in

    def f(x):
        return x + 1

    assert zerogpu.gpu(duration=5)(f) is f and zerogpu.gpu(duration=lambda x: 5)(f) is f


def test_without_spaces_the_decorator_is_a_no_op_too(monkeypatch):
    monkeypatch.setattr(zerogpu, "spaces", None)  # a local install from requirements.txt has no spaces

    def f(x):
        return x + 1

    assert zerogpu.gpu(duration=5)(f) is f


def test_the_space_starts_with_gpu_functions_under_real_zerogpu_emulation(tmp_path):
    """spaces in ZeroGPU mode (torch's CUDA emulated, as on a Space before launch) wraps our functions at import of
    app.py (a ZeroGPU Space with none refuses to start), and Predict's model loads where CUDA is emulated."""
    code = (
        "import threading, app, spaces.zero.decorator as d\n"
        "from segdemo.server import zerogpu\n"
        "from segdemo.assets import SHIPPED_CHECKPOINT, asset\n"
        # Predict loads its model in a request's thread, where CUDA is emulated only on the main thread
        "out = []\n"
        "t = threading.Thread(target=lambda: out.append(app.demo.segdemo_ctx.predictor(asset(SHIPPED_CHECKPOINT))))\n"
        "t.start(); t.join()\n"
        "print(len(d.decorated_cache), hasattr(zerogpu.train_chunk, 'zerogpu'),"
        " hasattr(zerogpu._predict_on_gpu, 'zerogpu'), out[0].device)\n"
    )
    env = {
        **os.environ,
        "SPACES_ZERO_GPU": "true",
        "SPACES_ZERO_DEVICE_API_URL": "http://127.0.0.1:9",
        "SEGDEMO_RUNS_DIR": str(tmp_path / "runs"),
        "PYTHONPATH": str(ROOT),
    }
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-2000:]
    # two functions, each cached under two keys; the app's own copy of a model stays on the CPU
    assert out.stdout.split()[-4:] == ["4", "True", "True", "cpu"]


# -- predict -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictor():
    from segdemo.assets import SHIPPED_CHECKPOINT, asset

    return Predictor.from_path(asset(SHIPPED_CHECKPOINT))


def test_predict_through_the_gpu_function_is_predict(predictor):
    image = np.asarray(open_builtin(tiny_config().data).val.load(0)[0])
    a = zerogpu.predict(predictor, image, alpha=0.3, probabilities=False)
    b = predictor.predict(image, alpha=0.3, probabilities=False)
    assert np.array_equal(a.mask, b.mask) and np.array_equal(a.overlay, b.overlay) and a.probs is None
    with pytest.raises(DataError, match="ground-truth mask"):  # the engine's sentence, not a bare worker error
        zerogpu.predict(predictor, image, target=np.zeros((3, 3), np.uint8))


def test_predict_out_of_quota_says_so_and_what_to_do(predictor, monkeypatch):
    def refused(*a):
        raise quota_error()

    monkeypatch.setattr(zerogpu, "_predict_on_gpu", refused)
    with pytest.raises(gr.Error) as e:
        zerogpu.predict(predictor, np.zeros((8, 8, 3), np.uint8))
    msg = str(e.value)
    assert "used up your ZeroGPU time" in msg and "try again in 13:45:10" in msg
    assert "log in to Hugging Face" in msg and "your own computer" in msg


# -- planning a chunk ----------------------------------------------------------------------------------------


def test_chunk_duration_follows_the_work_and_never_passes_the_cap():
    steps, s = zerogpu.plan_chunk(400, None, 60)  # first guess: as many steps as fit in 60 s
    assert 1 <= steps < 400 and s <= 60
    fast_steps, fast_s = zerogpu.plan_chunk(400, 0.01, 60)  # measured fast steps: all 400, a short request
    assert fast_steps == 400 and fast_s == pytest.approx(zerogpu.CALL_OVERHEAD_S + 400 * 0.01 * zerogpu.MARGIN, abs=1)
    slow_steps, slow_s = zerogpu.plan_chunk(400, 2.0, 60)
    assert slow_steps == int((60 - zerogpu.CALL_OVERHEAD_S) / (2.0 * zerogpu.MARGIN)) and slow_s <= 60
    assert zerogpu.plan_chunk(400, 100.0, 60)[0] == 1  # always at least one step


# -- chunked training through the job manager ---------------------------------------------------------------


class Isolated:
    """Stands in for what spaces does with the chunk on ZeroGPU: reads the visitor's request in the job's thread
    when the call starts (and may refuse it there, as schedule() does), pickles the chunk into a worker of its
    own, which runs ahead of the job and pickles each event back. Nothing but events and files returns."""

    def __init__(self, on_produced=None, refuse_from_call: int | None = None):
        self.calls: list[zerogpu.Chunk] = []
        self.requests: list[object] = []
        self.produced: list[tuple[int, object]] = []  # (call number, event) in the worker, as they happen
        self.on_produced, self.refuse_from_call = on_produced, refuse_from_call

    def __call__(self, chunk):
        self.requests.append(gradio_request_var().get(None))
        n = len(self.calls) + 1
        if self.refuse_from_call is not None and n >= self.refuse_from_call:
            raise quota_error()
        chunk = pickle.loads(pickle.dumps(chunk))
        self.calls.append(chunk)
        out: queue.Queue = queue.Queue()

        def worker():
            try:
                for ev in REAL_TRAIN_CHUNK(chunk):
                    self.produced.append((n, ev))
                    out.put(pickle.dumps(ev))
                    if self.on_produced:
                        self.on_produced(n, ev)
            except BaseException as e:
                out.put(e)
            if self.on_produced:
                self.on_produced(n, None)  # the call has returned
            out.put(None)

        threading.Thread(target=worker, daemon=True).start()
        while (item := out.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield pickle.loads(item)


REAL_TRAIN_CHUNK = zerogpu.train_chunk


def _metrics(run_dir: Path) -> list[dict]:
    keep = ("epoch", "train_loss", "val_loss", "miou", "pixel_accuracy", "lr", "per_class_iou")
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: json.loads(line)[k] for k in keep} for line in lines]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The same run unchunked: per-epoch metrics to match."""
    d = tmp_path_factory.mktemp("whole")
    result = Trainer(tiny_config(epochs=3), d).run()
    assert isinstance(result, Done) and result.reason == "finished"
    return _metrics(d)


@pytest.fixture
def jobs(tmp_path, monkeypatch):
    def make(steps: int, double: Isolated, **kw) -> JobManager:
        monkeypatch.setenv("SEGDEMO_TRAIN_CHUNK_STEPS", str(steps))
        monkeypatch.setattr(zerogpu, "train_chunk", double)
        made.append(JobManager(tmp_path / "runs", reaper=False, **kw))
        return made[-1]

    made: list[JobManager] = []
    yield make
    for jm in made:
        jm.close()


def _finish(job, timeout=180.0):
    end = time.time() + timeout
    while job.is_active and time.time() < end:
        job.wait_events(len(job.events), timeout=1.0)
    assert not job.is_active, "the run did not end in time"
    return job


def test_a_chunked_run_through_the_job_manager_equals_one_run(jobs, whole):
    double = Isolated()
    jm = jobs(5, double)  # 32 images in batches of 8: 4 steps an epoch, so chunks of 5 pause mid-epoch
    token = gradio_request_var().set("the Train click's request")
    try:
        job = jm.submit(OWNER, tiny_config(epochs=3))
    finally:
        gradio_request_var().reset(token)
    _finish(job)
    assert job.status == DONE and job.result.reason == "finished" and job.result.epochs_done == 3, job.message
    assert [(c.resume, c.max_steps) for c in double.calls] == [(False, 5), (True, 5), (True, 5)]
    assert all(0 < c.seconds <= zerogpu.MAX_CALL_S for c in double.calls)
    # spaces bills each call to whoever's request it finds: the visitor who pressed Train, in every chunk
    assert double.requests == ["the Train click's request"] * 3
    # the job sees one run: one Started, every step, every epoch, one Done
    assert sum(isinstance(e, Started) for e in job.events) == 1
    assert sum(isinstance(e, Progress) for e in job.events) == 12
    assert [e.epoch for e in job.events if isinstance(e, EpochEnd)] == [1, 2, 3]
    assert [type(e) for e in job.events[-1:]] == [Done] and job.events[-1].reason == "finished"
    assert _metrics(job.run_dir) == whole  # the same numbers as one unchunked run with the same seed
    assert not (job.run_dir / zerogpu.STOP_FILE).exists()


def _stop_and_resume(job, whole):
    """A stopped run: a loadable checkpoint, and resuming it (in chunks) finishes it as one run would have."""
    assert job.status == STOPPED and job.result.reason == "stopped", job.message
    load_checkpoint(job.run_dir / "last.safetensors")
    resumed = zerogpu.train_in_chunks(
        tiny_config(epochs=3), job.run_dir, resume=True, steps=4, chunk_fn=REAL_TRAIN_CHUNK
    )
    assert isinstance(resumed, Done) and resumed.reason == "finished" and resumed.epochs_done == 3, resumed
    assert _metrics(job.run_dir) == whole


def test_stop_within_a_chunk_acts_within_a_batch_or_two_then_resume_finishes(jobs, whole):
    stopped_at = {}

    def press_stop(n, ev):  # the visitor presses Stop as the worker trains chunk 2's second batch
        if n == 2 and isinstance(ev, Progress) and "at" not in stopped_at:
            stopped_at["at"] = len(double.produced)
            jm.stop(OWNER, job.id)

    double = Isolated(on_produced=press_stop)
    jm = jobs(3, double)
    job = jm.submit(OWNER, tiny_config(epochs=3))
    _finish(job)
    assert len(double.calls) == 2  # no chunk after the Stop
    after = [ev for _, ev in double.produced[stopped_at["at"] :] if isinstance(ev, Progress)]
    assert len(after) <= 2, after  # the worker saw the stop file before its next batch or the one after
    assert job.result.epochs_done == 1
    _stop_and_resume(job, whole)


def test_stop_between_chunks_starts_no_other_chunk_then_resume_finishes(jobs, whole):
    def press_stop(n, ev):
        if n == 1 and ev is None:
            jm.stop(OWNER, job.id)

    double = Isolated(on_produced=press_stop)
    jm = jobs(3, double)
    job = jm.submit(OWNER, tiny_config(epochs=3))
    _finish(job)
    assert len(double.calls) == 1 and job.result.epochs_done == 0
    state = load_checkpoint(job.run_dir / "last.safetensors").meta["training_state"]
    assert (state["epoch"], state["batch"]) == (0, 3)  # paused mid-epoch, resumable
    _stop_and_resume(job, whole)


def test_out_of_quota_fails_with_the_visitors_sentence_and_keeps_the_checkpoint(jobs, whole):
    double = Isolated(refuse_from_call=2)
    jm = jobs(5, double)
    job = jm.submit(OWNER, tiny_config(epochs=3))
    _finish(job)
    assert job.status == FAILED and len(double.calls) == 1
    msg = job.message
    assert msg.startswith("You have used up your ZeroGPU time on this Space for now")
    assert "try again in 13:45:10" in msg and "after epoch 1" in msg
    assert "log in to Hugging Face" in msg and "your own computer" in msg
    assert job.best_checkpoint is not None and load_checkpoint(job.best_checkpoint).metrics["epoch"] == 1
    resumed = zerogpu.train_in_chunks(
        tiny_config(epochs=3), job.run_dir, resume=True, steps=5, chunk_fn=REAL_TRAIN_CHUNK
    )
    assert resumed.reason == "finished" and _metrics(job.run_dir) == whole


def test_chunked_runs_take_turns_on_one_slot_and_each_equals_one_run(jobs, whole):
    """The fair share (fair_slice_s) works between chunks: a run gives its slot to another address's waiting
    run after a chunk, resumes at its next turn, and still computes what one run computes."""
    double = Isolated()
    jm = jobs(5, double, max_concurrent=1, fair_slice_s=0)
    a = jm.submit(OWNER, tiny_config(epochs=3), client="10.0.0.1")
    b = jm.submit("owner-b", tiny_config(epochs=3), client="10.0.0.2")
    _finish(a), _finish(b)
    assert a.status == DONE and b.status == DONE, (a.message, b.message)
    ran = [Path(c.run_dir).name for c in double.calls]
    assert ran[:2] == [a.id, b.id] and ran.count(a.id) == ran.count(b.id) == 3  # alternating turns
    for job in (a, b):
        assert sum(isinstance(e, Started) for e in job.events) == 1
        assert [e.epoch for e in job.events if isinstance(e, EpochEnd)] == [1, 2, 3]
        assert _metrics(job.run_dir) == whole
