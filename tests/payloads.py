"""What a hostile visitor sends, built once for the hostile tests and the load benchmark's hostile client."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from segdemo.core.checkpoint import save_checkpoint
from segdemo.core.config import RunConfig
from segdemo.core.encoders import build_model
from segdemo.data.base import ClassSet


def lying_checkpoint(path: Path, width: int, depth: int) -> Path:
    """~1 KB: a header whose config claims a huge U-Net, with no tensors behind it."""
    cfg = RunConfig()
    cfg.model.width, cfg.model.depth, cfg.model.num_classes = width, depth, 4
    meta = {
        "format": "segdemo-checkpoint",
        "version": 1,
        "config": cfg.to_dict(),
        "classes": ClassSet.default(["a", "b", "c", "d"]).to_dict(),
        "metrics": {},
    }
    header = json.dumps({"__metadata__": {"segdemo": json.dumps(meta)}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


def many_class_checkpoint(path: Path, k: int = 250, names: list[str] | None = None) -> Path:
    """A small valid model with k classes: its full-size scores on a large image would take gigabytes."""
    cfg = RunConfig()
    cfg.model.width, cfg.model.depth, cfg.model.num_classes = 4, 2, k
    cfg.data.image_size = 32
    names = names or [f"c{i}" for i in range(k)]
    save_checkpoint(path, build_model(cfg.model), cfg, ClassSet.default(names))
    return path


def flat_image(path: Path, side: int = 2048) -> Path:
    """A grey PNG of side x side: a few kilobytes on the wire, side^2 pixels to predict."""
    Image.fromarray(np.full((side, side, 3), 128, np.uint8)).save(path)
    return path


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A valid 1x1 PNG whose header claims width x height: a few bytes on the wire, a bomb if decoded."""
    import io
    import zlib

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    b = bytearray(buf.getvalue())
    b[16:24] = struct.pack(">II", width, height)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(b))
    return path
