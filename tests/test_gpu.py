"""The CUDA path: training (autocast, channels_last, cudnn.benchmark, pinned non-blocking copies), prediction
on the GPU, and torchrun with two processes sharing one GPU. Runs where a GPU is present; CI has none."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from segdemo.core.predict import Predictor
from segdemo.data.builtin import open_builtin
from segdemo.events import Done, Started
from segdemo.training.trainer import Trainer
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here; run on a GPU machine")


def test_trains_on_the_gpu_with_autocast_and_predicts_there(tmp_path):
    cfg = tiny_config(epochs=2, precision="auto", channels_last="auto", device="auto")
    events = []
    tr = Trainer(cfg, tmp_path, splits=open_builtin(cfg.data))
    tr.add_callback(events.append)
    res = tr.run()
    assert isinstance(res, Done) and res.reason == "finished", res
    started = next(e for e in events if isinstance(e, Started))
    assert started.device.startswith("cuda") and "autocast" in started.precision
    assert torch.backends.cudnn.benchmark
    pred = Predictor.from_path(tmp_path / "best.safetensors")
    assert pred.device.type == "cuda"
    out = pred.predict(np.zeros((77, 53, 3), np.uint8))
    assert out.mask.shape == (77, 53)


def test_two_processes_share_one_gpu_under_torchrun(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SEGDEMO_DIST_BACKEND": "gloo"}  # NCCL wants a GPU each
    r = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "segdemo",
            "train",
            "--data",
            "builtin",
            "--image-size",
            "32",
            "--width",
            "4",
            "--depth",
            "3",
            "--epochs",
            "2",
            "--out",
            str(tmp_path / "run"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "training on cuda" in r.stdout
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
