"""Shared fixtures: tiny configs that train in seconds on a 2-core CPU."""

from __future__ import annotations

import os
import socket
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402

from segdemo.config import RunConfig  # noqa: E402

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
