"""Faults: a process killed mid-run or mid-write, a full disk, an out-of-memory epoch."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from segdemo.core.checkpoint import load_checkpoint
from segdemo.data.builtin import open_builtin
from segdemo.events import Done, EpochEnd, Failed
from segdemo.training.trainer import Trainer
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]

# A training process with tiny settings; KILL_AT names where it SIGKILLs itself.
SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {root!r})
    from tests.conftest import tiny_config
    from segdemo.core import checkpoint
    from segdemo.data.builtin import open_builtin
    from segdemo.training.trainer import Trainer
    cfg = tiny_config(epochs={epochs})
    kill_at = os.environ.get("KILL_AT", "")
    if kill_at.startswith("write:"):  # die after the temp file is written, before the rename
        n, real = int(kill_at[6:]), os.replace
        calls = {{"n": 0}}
        def dying_replace(src, dst):
            if str(dst).endswith(".safetensors"):
                calls["n"] += 1
                if calls["n"] == n:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst)
        os.replace = dying_replace
    Trainer(cfg, sys.argv[1], splits=open_builtin(cfg.data), resume=len(sys.argv) > 2).run()
""")


def run_script(run_dir, epochs, *extra, kill_at=""):
    code = SCRIPT.format(root=str(ROOT), epochs=epochs)
    env = {**os.environ, "KILL_AT": kill_at}
    return subprocess.Popen([sys.executable, "-c", code, str(run_dir), *extra], env=env)


def epochs_logged(run_dir):
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.strip()]


def test_kill_9_during_training_then_resume(tmp_path):
    p = run_script(tmp_path, 6)
    deadline = time.time() + 120
    while len(epochs_logged(tmp_path)) < 2 and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = epochs_logged(tmp_path)
    assert len(done) >= 2
    ck = load_checkpoint(tmp_path / "last.safetensors")  # the newest complete checkpoint loads
    saved_epoch = ck.meta["training_state"]["epoch"]
    assert run_script(tmp_path, 6, "--resume").wait() == 0
    assert epochs_logged(tmp_path) == list(range(1, 7))  # no gaps, no duplicates
    assert load_checkpoint(tmp_path / "last.safetensors").meta["training_state"]["epoch"] == 6 > saved_epoch
    assert not list(tmp_path.glob(".*tmp*"))


def test_kill_9_during_a_checkpoint_write(tmp_path):
    # Writes per epoch: best (when improved), then last. The 4th .safetensors rename happens in
    # epoch 2 at the latest; the process dies with a complete temp file not yet renamed.
    p = run_script(tmp_path, 4, kill_at="write:4")
    assert p.wait() == -signal.SIGKILL
    assert list(tmp_path.glob(".*.tmp"))  # the torn write is there...
    before = load_checkpoint(tmp_path / "last.safetensors").meta["training_state"]["epoch"]
    assert run_script(tmp_path, 4, "--resume").wait() == 0
    assert not list(tmp_path.glob(".*tmp*"))  # ...and gone after restart
    assert epochs_logged(tmp_path) == [1, 2, 3, 4]
    assert before < 4


def test_disk_full_while_saving_is_reported_and_previous_survives(tmp_path, monkeypatch):
    cfg = tiny_config(epochs=3)
    events = []
    tr = Trainer(cfg, tmp_path, splits=open_builtin(cfg.data))
    tr.add_callback(events.append)
    real_fsync = os.fsync

    def fsync_fills_up(fd):
        if sum(isinstance(e, EpochEnd) for e in events) >= 1:  # epoch 1 saved; epoch 2's save fails
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_fills_up)
    result = tr.run()
    monkeypatch.undo()
    assert isinstance(result, Failed) and "previous checkpoint is kept" in result.message
    assert "disk space" in result.message
    assert load_checkpoint(tmp_path / "last.safetensors").meta["training_state"]["epoch"] == 1


def test_out_of_memory_in_an_epoch_fails_with_advice(tmp_path, monkeypatch):
    cfg = tiny_config(epochs=2)
    tr = Trainer(cfg, tmp_path, splits=open_builtin(cfg.data))
    import segdemo.core.model as model_mod

    def oom(self, x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(model_mod.UNet, "forward", oom)
    result = tr.run()
    assert isinstance(result, Failed)
    assert "smaller batch size or image size" in result.message


def test_a_run_after_a_failed_one_works(tmp_path):
    cfg = tiny_config(epochs=1)
    assert isinstance(Trainer(cfg, tmp_path / "b", splits=open_builtin(cfg.data)).run(), Done)


@pytest.mark.parametrize("torn", ['{"epoch": 3, "train_lo', ""])
def test_resume_drops_a_torn_log_line(tmp_path, torn):
    cfg = tiny_config(epochs=2)
    Trainer(cfg, tmp_path, splits=open_builtin(cfg.data)).run()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(torn)
    cfg3 = tiny_config(epochs=3)
    Trainer(cfg3, tmp_path, splits=open_builtin(cfg3.data), resume=True).run()
    assert epochs_logged(tmp_path) == [1, 2, 3]
