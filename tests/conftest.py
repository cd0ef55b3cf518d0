"""Shared fixtures: tiny configs that train in seconds on a 2-core CPU."""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402

from segdemo.core.config import RunConfig  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# CamVid's 11 classes in label order (12th value, 11, is void), as ../shared/data/README.md lists them
CAMVID_NAMES = [
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
]


def tiny_config(**train) -> RunConfig:
    """A 4-channel-wide U-Net on 32 built-in images at 32 px: a whole run takes a few seconds."""
    cfg = RunConfig()
    cfg.data.builtin_train, cfg.data.builtin_val, cfg.data.image_size = 32, 8, 32
    cfg.model.width, cfg.model.depth = 4, 3
    cfg.train.epochs, cfg.train.batch_size = 2, 8
    cfg.train.precision, cfg.train.channels_last = "fp32", "off"  # skip the speed probe in tests
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def tiny_train_args(**over) -> dict:
    """/train's arguments, by name, for a run of a few seconds: 32 built-in images at 32 px, width 4, 2 epochs."""
    args = dict(
        dataset="builtin",
        zip_file=None,
        preset="minute",
        image_size=32,
        epochs=2,
        batch_size=8,
        learning_rate=0.003,
        loss="ce_dice",
        width=4,
        depth=3,
        upsampling="transposed",
        augment=True,
        train_images=32,
    )
    args.update(over)
    return args


@pytest.fixture
def tiny_cfg() -> RunConfig:
    return tiny_config()


def shared_data(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real data not here: {path} (see ../shared/data/README.md)")
    return path


def free_port() -> int:
    """A local TCP port nobody is listening on, for a test's own app server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, proc, log: Path, timeout: float = 120) -> None:
    """Wait for a server subprocess to answer 200 at url; fail with its log if it exits or takes too long."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)


@contextmanager
def in_process_app(tmp: Path):
    """The app built in this process on a free port, with its runs under `tmp`, no shipped model and one
    training slot: (url, its JobManager, the Blocks). Closed on exit."""
    from segdemo.server.jobs import JobManager
    from segdemo.ui import build_demo, launch

    jobs = JobManager(tmp / "runs", max_concurrent=1, reaper=False)
    demo = build_demo(jobs, cache_dir=tmp / "cache", default_checkpoint=tmp / "no-shipped-model.safetensors")
    port = free_port()
    launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", jobs, demo
    finally:
        demo.close()
        jobs.close()


def api_session(url: str):
    """(a gradio_client Client, its browser's owner token), as a fresh page gets one."""
    from gradio_client import Client

    c = Client(url, verbose=False, ssl_verify=False)  # plain http: no certificate store per request
    return c, c.predict(None, api_name="/session")


@contextmanager
def app_subprocess(tmp: Path, **extra_env: str):
    """`python app.py` of this checkout on a free local port, its runs under `tmp`, one training slot, its
    output in tmp/app.log (and `extra_env` in its environment): yields (url, log path) once it answers;
    stopped on exit."""
    import subprocess
    import sys

    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "SEGDEMO_RUNS_DIR": str(tmp / "runs"),
        "SEGDEMO_MAX_CONCURRENT": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        **extra_env,
    }
    log_path = tmp / "app.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "app.py"], cwd=Path(__file__).resolve().parents[1], env=env, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}/"
            wait_until_serving(url, proc, log_path)
            yield url, log_path
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
