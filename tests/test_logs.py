"""A bug leaves a trace: its traceback reaches the CLI's train.log and the server's stderr, while the user sees
one sentence. The bug is real (a training step raises RuntimeError) in real processes: the CLI and the app."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_until_serving

ROOT = Path(__file__).resolve().parents[1]
TINY = "--epochs 1 --image-size 32 --width 4 --depth 3 --precision fp32 --max-train-images 16".split()
BUG = "deliberate bug in a training step"
PRESET = "minute"
# Makes the training step's loss fail the way a bug in the loop would (the speed probe has its own loss).
PLANT_BUG = textwrap.dedent(f"""
    import segdemo.core.losses
    def forward(self, logits, target):
        raise RuntimeError({BUG!r})
    segdemo.core.losses.SegLoss.forward = forward
""")
ENV = {
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "PATH": "/usr/bin:/bin",
    "HOME": str(Path.home()),
    "PYTHONUNBUFFERED": "1",
}


def cli_with_bug(*args) -> subprocess.CompletedProcess:
    code = PLANT_BUG + "import sys\nfrom segdemo.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV
    )


def test_a_bug_in_training_is_in_the_run_folders_log_and_one_line_on_stderr(tmp_path):
    out = tmp_path / "run"
    r = cli_with_bug("train", "--data", "builtin", "--out", out, *TINY)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "training failed unexpectedly (RuntimeError)" in r.stderr and str(out / "train.log") in r.stderr
    log = (out / "train.log").read_text()
    assert "Traceback (most recent call last)" in log and f"RuntimeError: {BUG}" in log
    assert "Started " in log and '"n_train": 16' in log  # the run's own record leads up to it


def test_verbose_shows_the_traceback_on_stderr(tmp_path):
    r = cli_with_bug("train", "--data", "builtin", "--out", tmp_path / "run", *TINY, "--verbose")
    assert r.returncode == 2
    assert "Traceback (most recent call last)" in r.stderr and f"RuntimeError: {BUG}" in r.stderr


def test_a_bug_outside_the_trainer_points_to_verbose(tmp_path):
    """`segdemo predict` has no run folder: a bug says it is one, exits 1, and --verbose shows the traceback."""
    code = (
        "import segdemo.core.predict as p\n"
        "def predict(self, *a, **k):\n    raise ValueError('operands could not be broadcast')\n"
        "p.Predictor.predict = predict\n"
        "import sys\nfrom segdemo.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    ckpt = ROOT / "checkpoints" / "shapes_unet.safetensors"
    image = ROOT / "examples" / "shapes_1.png"
    for verbose in ([], ["--verbose"]):
        r = subprocess.run(
            [sys.executable, "-c", code, "predict", str(ckpt), str(image), "--out", str(tmp_path), *verbose],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            env=ENV,
        )
        assert r.returncode == 1, r.stderr
        assert "a bug in segdemo" in r.stderr and "ValueError" in r.stderr  # a bare ValueError is not advice
        assert ("Traceback" in r.stderr) == bool(verbose), r.stderr


def test_a_bug_in_training_and_in_a_handler_reach_the_server_log(tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    port = free_port()
    code = PLANT_BUG + textwrap.dedent(f"""
        import segdemo.core.predict as p
        def predict(self, *a, **k):
            raise ValueError("deliberate bug in a handler")
        p.Predictor.predict = predict
        from segdemo.server.jobs import JobManager
        from segdemo.ui import build_demo, launch
        jobs = JobManager({str(tmp_path / "runs")!r}, reaper=False)
        launch(build_demo(jobs, cache_dir={str(tmp_path / "cache")!r}), server_name="127.0.0.1", server_port={port})
    """)
    log = tmp_path / "server.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_serving(url, proc, log)
        deadline = time.monotonic() + 240
        c = Client(url, verbose=False, ssl_verify=False)
        token = c.predict(None, api_name="/session")
        # the /train parameters by position, as bench/load_test.py sends them: token, dataset, zip, preset, settings
        args = (
            "builtin",
            None,
            "minute",
            32,
            1,
            8,
            0.003,
            "ce_dice",
            4,
            3,
            "transposed",
            False,
            16,
        )
        run_id, _ = c.predict(token, *args, api_name="/train")
        info = {}
        while time.monotonic() < deadline:
            info = c.predict(token, run_id, api_name="/run_info")
            if info["finished"]:
                break
            time.sleep(0.5)
        assert info["status"] == "failed", info
        assert "unexpectedly (RuntimeError)" in info["message"] and "Traceback" not in info["message"]
        example = ROOT / "examples" / "shapes_1.png"
        with pytest.raises(AppError) as e:
            c.predict(token, "default", None, [handle_file(example)], None, None, 0.5, False, api_name="/predict")
        assert "unexpected" in str(e.value) and "deliberate" not in str(e.value)  # the page gets no internals
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert f"RuntimeError: {BUG}" in text and "Traceback (most recent call last)" in text, text[-3000:]
    assert "ValueError: deliberate bug in a handler" in text, text[-3000:]
    assert f"run {run_id[:6]} failed" in text  # the job's end, at INFO
