"""JobManager: the cap on concurrent training, FIFO queue, stop, owner isolation, expiry, Train twice."""

from __future__ import annotations

import gc
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch

from segdemo.data.builtin import open_builtin
from segdemo.events import Done, EpochEnd, Failed, Progress, Started
from segdemo.server.jobs import DONE, FAILED, NO_SUCH_RUN, QUEUED, RUNNING, STOPPED, JobError, JobManager
from tests.conftest import tiny_config


class FakeTrainer:
    """Emits the trainer's events on a timetable; records how many fakes train at the same moment."""

    lock = threading.Lock()
    active = 0
    peak = 0
    order: list[str] = []

    def __init__(self, config, run_dir, *, splits=None, should_stop=None, steps=6, step_s=0.05):
        self.config, self.run_dir, self.should_stop = config, Path(run_dir), should_stop
        self.steps, self.step_s = steps, step_s
        self.callbacks = []

    def add_callback(self, fn):
        self.callbacks.append(fn)

    def emit(self, ev):
        for fn in self.callbacks:
            fn(ev)

    def run(self):
        cls = FakeTrainer
        with cls.lock:
            cls.active += 1
            cls.peak = max(cls.peak, cls.active)
            cls.order.append(self.run_dir.name)
        try:
            self.emit(
                Started(
                    run_dir=str(self.run_dir),
                    device="cpu",
                    precision="fp32",
                    epochs=1,
                    start_epoch=1,
                    n_train=8,
                    n_val=2,
                    class_names=["bg", "fg"],
                    class_colors=[(0, 0, 0), (255, 0, 0)],
                    parameters=10,
                )
            )
            for b in range(self.steps):
                if self.should_stop():
                    done = Done(
                        reason="stopped",
                        epochs_done=0,
                        best_miou=None,
                        best_epoch=None,
                        best_checkpoint=None,
                        last_checkpoint=None,
                        seconds=0.1,
                    )
                    self.emit(done)
                    return done
                time.sleep(self.step_s)
                self.emit(Progress(epoch=1, batch=b + 1, n_batches=self.steps, loss=1.0, images_per_s=100.0))
            self.emit(
                EpochEnd(
                    epoch=1,
                    epochs=1,
                    train_loss=1.0,
                    val_loss=1.0,
                    miou=0.5,
                    pixel_accuracy=0.8,
                    per_class_iou=[0.5, 0.5],
                    lr=1e-3,
                    seconds=0.3,
                    images_per_s=100.0,
                    is_best=True,
                )
            )
            done = Done(
                reason="finished",
                epochs_done=1,
                best_miou=0.5,
                best_epoch=1,
                best_checkpoint=None,
                last_checkpoint=None,
                seconds=0.3,
            )
            self.emit(done)
            return done
        finally:
            with cls.lock:
                cls.active -= 1


@pytest.fixture
def fake():
    FakeTrainer.active, FakeTrainer.peak, FakeTrainer.order = 0, 0, []
    return FakeTrainer


def _wait(pred, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_cap_fifo_and_queue_positions(tmp_path, fake):
    jm = JobManager(
        tmp_path,
        max_concurrent=1,
        reaper=False,
        trainer_factory=lambda *a, **k: fake(*a, **k, steps=10, step_s=0.04),
    )
    try:
        a = jm.submit("alice", tiny_config())
        assert _wait(lambda: a.status == RUNNING)
        b = jm.submit("bob", tiny_config())
        c = jm.submit("carol", tiny_config())
        assert (b.status, c.status) == (QUEUED, QUEUED)
        assert [jm.queue_position(j) for j in (a, b, c)] == [0, 1, 2]
        assert _wait(lambda: b.status == RUNNING)
        assert jm.queue_position(c) == 1 and jm.running_count() == 1
        assert _wait(lambda: all(j.status == DONE for j in (a, b, c)))
        assert fake.peak == 1  # never two training at once
        assert fake.order == [a.id, b.id, c.id]  # first come, first served
        # a job's training interval starts only after the previous one ended
        assert a.finished <= b.started and b.finished <= c.started
        for j in (a, b, c):
            kinds = [type(e) for e in j.events]
            assert kinds[0] is Started and kinds[-1] is Done and EpochEnd in kinds
    finally:
        jm.close()


def test_cap_of_two_lets_two_train(tmp_path, fake):
    jm = JobManager(
        tmp_path,
        max_concurrent=2,
        reaper=False,
        trainer_factory=lambda *a, **k: fake(*a, **k, steps=8, step_s=0.04),
    )
    try:
        jobs = [jm.submit(o, tiny_config()) for o in ("a", "b", "c")]
        assert _wait(lambda: all(j.status == DONE for j in jobs))
        assert fake.peak == 2
    finally:
        jm.close()


def test_train_twice_refused_then_allowed_after_the_end(tmp_path, fake):
    jm = JobManager(tmp_path, reaper=False, trainer_factory=lambda *a, **k: fake(*a, **k, steps=5))
    try:
        j = jm.submit("alice", tiny_config())
        with pytest.raises(JobError, match="already have a run in progress"):
            jm.submit("alice", tiny_config())
        jm.submit("bob", tiny_config())  # another owner is not blocked by alice's run
        assert _wait(lambda: not j.is_active)
        j2 = jm.submit("alice", tiny_config())
        assert j2.id != j.id and len(j2.id) >= 20
    finally:
        jm.close()


def test_bad_settings_refused_with_a_sentence(tmp_path, fake):
    jm = JobManager(tmp_path, reaper=False, trainer_factory=fake)
    cfg = tiny_config()
    cfg.train.learning_rate = 5.0
    with pytest.raises(JobError, match="learning rate must be between 0 and 1"):
        jm.submit("alice", cfg)
    jm.close()


def test_owner_isolation(tmp_path, fake):
    jm = JobManager(tmp_path, reaper=False, trainer_factory=lambda *a, **k: fake(*a, **k, steps=200))
    try:
        j = jm.submit("alice", tiny_config())
        for attempt in (lambda: jm.get("mallory", j.id), lambda: jm.stop("mallory", j.id)):
            with pytest.raises(JobError) as e:
                attempt()
            assert str(e.value) == NO_SUCH_RUN  # the same words as a wrong id: nothing is revealed
        with pytest.raises(JobError) as e:
            jm.get("alice", "not-a-run")
        assert str(e.value) == NO_SUCH_RUN
        assert jm.jobs_for("mallory") == [] and jm.active_for("mallory") is None
        with pytest.raises(JobError, match="Nothing is running"):
            jm.stop("mallory")  # mallory's own "stop" sees nothing and does not touch alice's run
        assert j.is_active and not j.stop_event.is_set()
        assert jm.get("alice", j.id) is j and jm.jobs_for("alice") == [j]
        jm.stop("alice", j.id)
        assert _wait(lambda: j.status == STOPPED)
        with pytest.raises(JobError, match="already ended"):
            jm.stop("alice", j.id)
        with pytest.raises(JobError, match="Nothing is running"):
            jm.stop("alice")
    finally:
        jm.close()


def test_stopping_a_queued_job_leaves_the_queue(tmp_path, fake):
    jm = JobManager(
        tmp_path,
        max_concurrent=1,
        reaper=False,
        trainer_factory=lambda *a, **k: fake(*a, **k, steps=30, step_s=0.03),
    )
    try:
        a = jm.submit("alice", tiny_config())
        assert _wait(lambda: a.status == RUNNING)
        b = jm.submit("bob", tiny_config())
        c = jm.submit("carol", tiny_config())
        jm.stop("bob", b.id)
        assert _wait(lambda: b.status == STOPPED)
        assert jm.queue_position(c) == 1 and b.started is None
        assert isinstance(b.events[-1], Done) and b.events[-1].reason == "stopped"
        assert _wait(lambda: c.status == DONE)
        assert b.id not in fake.order
    finally:
        jm.close()


def test_stop_within_one_batch_with_the_real_trainer(tmp_path):
    cfg = tiny_config(epochs=3, batch_size=4)
    cfg.data.builtin_train = 64  # 16 batches per epoch: far from the end when we stop
    jm = JobManager(tmp_path, reaper=False)
    try:
        j = jm.submit("alice", cfg, splits=open_builtin(cfg.data))
        seen = []
        while not any(isinstance(e, Progress) for e in seen):
            seen = j.wait_events(0, timeout=30)
            assert j.is_active, j.events
        jm.stop("alice", j.id)
        n_at_stop = sum(isinstance(e, Progress) for e in j.events)
        assert _wait(lambda: not j.is_active, 60)
        progress_after = sum(isinstance(e, Progress) for e in j.events) - n_at_stop
        assert progress_after <= 1  # at most the batch that was already under way
        assert j.status == STOPPED and isinstance(j.events[-1], Done) and j.events[-1].reason == "stopped"
    finally:
        jm.close()


def test_wait_events_blocks_until_new_events_and_returns_in_order(tmp_path, fake):
    jm = JobManager(tmp_path, reaper=False, trainer_factory=lambda *a, **k: fake(*a, **k, steps=4))
    try:
        j = jm.submit("alice", tiny_config())
        got, i = [], 0
        while True:
            new = j.wait_events(i, timeout=5)
            got += new
            i += len(new)
            if not new and not j.is_active:
                break
        assert [type(e).__name__ for e in got] == ["Started"] + ["Progress"] * 4 + ["EpochEnd", "Done"]
        t = time.time()
        assert j.wait_events(i, timeout=5) == [] and time.time() - t < 1  # over: no waiting
    finally:
        jm.close()


def test_exceptions_end_as_failed_events(tmp_path):
    class Broken(FakeTrainer):
        def run(self):
            raise RuntimeError("boom")

    jm = JobManager(tmp_path, reaper=False, trainer_factory=Broken)
    try:
        j = jm.submit("alice", tiny_config())
        assert _wait(lambda: j.status == FAILED)
        assert isinstance(j.events[-1], Failed) and "RuntimeError" in j.events[-1].message
        assert jm.running_count() == 0
        j2 = jm.submit("alice", tiny_config())  # the server and the owner carry on
        assert _wait(lambda: j2.status == FAILED)
    finally:
        jm.close()


def test_expiry_removes_finished_runs_and_their_folders_never_running_ones(tmp_path, fake):
    jm = JobManager(
        tmp_path,
        ttl_s=60,
        reaper=False,
        trainer_factory=lambda *a, **k: fake(*a, **k, steps=400, step_s=0.02),
    )
    try:
        old = jm.submit("alice", tiny_config())
        jm.stop("alice", old.id)
        assert _wait(lambda: old.status == STOPPED)
        running = jm.submit("bob", tiny_config())
        assert _wait(lambda: running.status == RUNNING)
        stray = tmp_path / "Aa0_-bcdefghijklmnopqr"  # a run folder left by a crash, no job registered
        stray.mkdir()
        (stray / "job.json").write_text("{not json")
        keep = tmp_path / "not-a-run"  # anything else in the root is never touched
        keep.mkdir()
        assert jm.cleanup_expired(now=time.time() + 30) == 0 and old.run_dir.exists()
        assert jm.cleanup_expired(now=time.time() + 3600) == 1
        assert not old.run_dir.exists() and not stray.exists() and keep.exists()
        with pytest.raises(JobError):
            jm.get("alice", old.id)
        assert jm.get("bob", running.id).is_active and running.run_dir.exists()
    finally:
        jm.close()


def test_owner_tokens_are_signed(tmp_path):
    jm = JobManager(tmp_path, reaper=False)
    t = jm.issue_owner_token()
    assert jm.valid_owner_token(t) and t != jm.issue_owner_token()
    nonce, sig = t.split(".")
    assert not jm.valid_owner_token(f"{nonce}.{sig[:-1]}x" if sig[-1] != "x" else f"{nonce}.{sig[:-1]}y")
    assert not jm.valid_owner_token("abc") and not jm.valid_owner_token(None) and not jm.valid_owner_token("")
    # the same root (persistent storage) keeps the secret, so tokens outlive a restart
    assert JobManager(tmp_path, reaper=False).valid_owner_token(t)
    assert not JobManager(tmp_path / "other", reaper=False).valid_owner_token(t)
    jm.close()


def test_finished_runs_are_listed_again_after_a_restart(tmp_path):
    cfg = tiny_config(epochs=1)
    jm = JobManager(tmp_path, reaper=False)
    j = jm.submit("alice", cfg, splits=open_builtin(cfg.data))
    assert _wait(lambda: not j.is_active, 120) and j.status == DONE
    jm.close()
    jm2 = JobManager(tmp_path, reaper=False)
    j2 = jm2.get("alice", j.id)
    assert j2.status == DONE and j2.best_checkpoint is not None
    assert [type(e).__name__ for e in j2.events] == ["Started", "EpochEnd", "Done"]
    assert jm2.jobs_for("bob") == []
    assert "alice" not in (j.run_dir / "job.json").read_text()  # only a hash of the owner is stored


def _live(kind) -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on torch's deprecated module proxies warns
        warnings.simplefilter("ignore")
        return sum(isinstance(o, kind) for o in gc.get_objects())


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_stop_mid_epoch_frees_the_run_and_the_next_one_starts(tmp_path):
    """Stop, four times over, each in the middle of an epoch: the thread ends, no model, optimiser or
    trainer stays alive after it, memory does not creep up from run to run, and a new run starts."""
    from segdemo.core.model import UNet
    from segdemo.training.trainer import Trainer

    cfg = tiny_config(epochs=50, batch_size=4)
    cfg.data.builtin_train = 64
    jm = JobManager(tmp_path, reaper=False)
    before = (_live(UNet), _live(Trainer), _live(torch.optim.Optimizer), threading.active_count())
    rss = []
    try:
        for _ in range(4):
            j = jm.submit("alice", cfg, splits=open_builtin(cfg.data))
            assert _wait(lambda j=j: sum(isinstance(e, Progress) for e in j.events) >= 3, 60), j.events
            jm.stop("alice", j.id)
            assert _wait(lambda j=j: not j.is_active, 60)
            assert j.status == STOPPED and j.best_checkpoint is None  # stopped inside epoch 1
            assert _wait(lambda: threading.active_count() <= before[3], 10)  # the run's thread ended
            assert (_live(UNet), _live(Trainer), _live(torch.optim.Optimizer)) == before[:3]
            rss.append(_rss_mb())
        # the first run pays for one-off allocations (thread pools, caches); later ones must not add up
        assert rss[-1] - rss[1] < 40, rss
    finally:
        jm.close()


def test_one_address_runs_wait_behind_everyone_elses_first(tmp_path, fake):
    """Round robin by address: a client that queued three runs does not hold the slot before another's one."""
    jm = JobManager(
        tmp_path, max_concurrent=1, reaper=False, trainer_factory=lambda *a, **k: fake(*a, **k, steps=6, step_s=0.03)
    )
    try:
        flood = [jm.submit(f"m{i}", tiny_config(), client="10.9.9.9") for i in range(3)]
        honest = jm.submit("alice", tiny_config(), client="bob's laptop")
        assert _wait(lambda: all(j.status == DONE for j in [*flood, honest]))
        order = sorted([*flood, honest], key=lambda j: j.started)
        assert order.index(honest) <= 1  # right after the flood's first run, not after all three
    finally:
        jm.close()


def test_a_long_run_yields_its_slot_to_another_address_and_goes_on_exactly(tmp_path):
    """Fair share: past its slice a run pauses (a resumable checkpoint) when another address waits, that run
    trains, and the long one goes on where it paused: the same numbers as a run never paused."""
    cfg = tiny_config(epochs=4)
    jm = JobManager(tmp_path / "shared", max_concurrent=1, reaper=False, fair_slice_s=0.0)
    try:
        long = jm.submit("carol", cfg, splits=open_builtin(cfg.data), client="198.51.100.7")
        assert _wait(lambda: sum(isinstance(e, Progress) for e in long.events) >= 1, 60)
        short = jm.submit("dave", tiny_config(epochs=1), splits=open_builtin(cfg.data), client="198.51.100.8")
        assert _wait(lambda: not long.is_active and not short.is_active, 120)
        assert long.status == DONE and short.status == DONE, (long.events[-1], short.events[-1])
        assert short.finished < long.finished and short.started < long.finished  # it did not wait for all 4 epochs
        assert sum(isinstance(e, Started) for e in long.events) == 1  # one run to its watcher
        assert [e.epoch for e in long.events if isinstance(e, EpochEnd)] == [1, 2, 3, 4]
    finally:
        jm.close()
    alone = JobManager(tmp_path / "alone", max_concurrent=1, reaper=False)
    try:
        ref = alone.submit("carol", cfg, splits=open_builtin(cfg.data), client="198.51.100.7")
        assert _wait(lambda: not ref.is_active, 120)
    finally:
        alone.close()
    assert [e.miou for e in long.events if isinstance(e, EpochEnd)] == [
        e.miou for e in ref.events if isinstance(e, EpochEnd)
    ]
