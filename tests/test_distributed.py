"""torchrun on CPU with gloo: two real processes train one run; process 0 alone writes; the summed metrics
equal a one-process evaluation of the saved checkpoint; a run killed mid-epoch resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segdemo.core.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
TINY = [
    "--data",
    "builtin",
    "--image-size",
    "32",
    "--width",
    "4",
    "--depth",
    "3",
    "--batch-size",
    "8",
    "--precision",
    "fp32",
    "--channels-last",
    "off",
]

pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")


def torchrun(out: Path, *args: str, nproc: int = 2) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        str(TORCHRUN),
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "segdemo",
        "train",
        *TINY,
        "--out",
        str(out),
        *args,
    ]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )  # its own process group: a kill reaches every rank


def descendants(pid: int) -> list[int]:
    """Every process below pid, read from /proc: torch elastic starts each rank in a session of its own."""
    children = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                children.append(int(d.name))
    return children + [g for c in children for g in descendants(c)]


def logged(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_two_processes_train_one_run_and_score_like_one_process(tmp_path):
    out = tmp_path / "run"
    p = torchrun(out, "--epochs", "2")
    text, _ = p.communicate(timeout=300)
    assert p.returncode == 0, text
    assert text.count("epoch   1/2") == 1 and text.count("finished after 2 epochs") == 1  # one process speaks
    names = {f.name for f in out.iterdir()}
    assert {"best.safetensors", "last.safetensors", "metrics.jsonl", "curves.png"} <= names
    assert names <= {"best.safetensors", "last.safetensors", "metrics.jsonl", "curves.png", "train.log"}
    assert not list(out.glob(".*tmp*"))
    records = logged(out)
    assert [r["epoch"] for r in records] == [1, 2]  # written once, not once per process

    # the summed confusion matrix over two shards equals one process scoring the whole split
    r = subprocess.run(
        [sys.executable, "-m", "segdemo", "evaluate", str(out / "last.safetensors"), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    single = json.loads(r.stdout)
    assert single["miou"] == pytest.approx(records[-1]["miou"], abs=1e-6)
    assert single["pixel_accuracy"] == pytest.approx(records[-1]["pixel_accuracy"], abs=1e-6)
    ious = [c["iou"] for c in single["per_class"]]
    assert ious == pytest.approx(records[-1]["per_class_iou"], abs=1e-6)


def test_a_run_killed_mid_epoch_resumes(tmp_path):
    out = tmp_path / "run"
    p = torchrun(out, "--epochs", "4")
    deadline = time.time() + 240
    while time.time() < deadline and not logged(out):
        time.sleep(0.1)
    assert logged(out), "no epoch finished in time"
    time.sleep(0.3)  # into epoch 2
    for pid in [*descendants(p.pid), p.pid]:  # both ranks and torchrun, mid-epoch (each rank has its own session)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.wait(timeout=30)
    done = [r["epoch"] for r in logged(out)]
    time.sleep(2)
    assert [r["epoch"] for r in logged(out)] == done  # no rank lives on to write more
    assert done and done[-1] < 4
    c = load_checkpoint(out / "last.safetensors")  # the last complete checkpoint is intact
    assert c.meta["training_state"]["epoch"] == done[-1]

    p = torchrun(out, "--epochs", "4", "--resume")
    text, _ = p.communicate(timeout=300)
    assert p.returncode == 0, text
    assert f"epoch   {done[-1] + 1}/4" in text
    assert [r["epoch"] for r in logged(out)] == [1, 2, 3, 4]  # no gaps, no duplicates


def test_two_processes_fine_tune_the_imagenet_encoder(tmp_path):
    """EfficientNet-Lite0 under DistributedDataParallel: its own learning rate and frozen BatchNorm statistics
    in two processes; one checkpoint set, and its metrics are the whole split's."""
    out = tmp_path / "run"
    p = torchrun(out, "--epochs", "1", "--encoder", "efficientnet_lite0", "--width", "4", "--depth", "4")
    text, _ = p.communicate(timeout=300)
    assert p.returncode == 0, text
    assert text.count("finished after 1 epochs") == 1
    r = subprocess.run(
        [sys.executable, "-m", "segdemo", "evaluate", str(out / "last.safetensors"), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["miou"] == pytest.approx(logged(out)[-1]["miou"], abs=1e-6)
