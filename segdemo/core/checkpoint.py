"""Checkpoints that cannot run code: safetensors weights plus JSON metadata in the same file.

One `.safetensors` file holds the model weights (`model.*`), for resumable checkpoints also the
optimiser state (`optim.*`) and torch RNG state, and in its header a JSON document with the run
config, class names and colours, normalisation and metrics, so a checkpoint alone rebuilds its
model. We never call torch.load / pickle: PyTorch's own docs say a pickled model file is a program.
Writes go to a temp file, are fsynced, then renamed over the target, so a crash leaves either the
old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from segdemo.atomic import fsync_folder, replace_file  # noqa: F401  (replace_file re-exported)
from segdemo.core.config import RunConfig
from segdemo.core.encoders import build_model
from segdemo.core.losses import out_channels
from segdemo.data.base import ClassSet
from segdemo.errors import CheckpointError, CheckpointWriteError  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

FORMAT = "segdemo-checkpoint"
VERSION = 1
MAX_FILE_BYTES = 1 << 30  # 1 GiB: far above any U-Net we build, far below a memory-exhaustion attack
MAX_HEADER_BYTES = 4 << 20  # the JSON + tensor table; ours are a few KB


@dataclass
class Checkpoint:
    model: nn.Module  # in eval mode, on the CPU
    config: RunConfig
    classes: ClassSet
    meta: dict[str, Any]  # the whole JSON document
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # optim.* and rng.* tensors, if any

    @property
    def metrics(self) -> dict[str, Any]:
        return self.meta.get("metrics", {})


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    config: RunConfig,
    classes: ClassSet,
    *,
    metrics: dict[str, Any] | None = None,
    training_state: dict[str, Any] | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    trained_on: dict[str, Any] | None = None,
) -> Path:
    """Write atomically; training_state (JSON-able) and extra_tensors make a checkpoint resumable; trained_on
    says what data the model learnt from (description, image counts, familiar.training_stats) for its card."""
    tensors = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    for k, v in (extra_tensors or {}).items():
        tensors[k] = v.detach().to("cpu").contiguous()
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "config": config.to_dict(),
        "classes": classes.to_dict(),
        "normalization": {
            "mean": list(config.data.mean),
            "std": list(config.data.std),
            "image_size": config.data.image_size,
            "resize": config.data.resize,
            "window": config.data.window,
        },  # the scale Predict reproduces (also in config)
        "metrics": metrics or {},
        "training_state": training_state,
        "trained_on": trained_on or {},
    }
    data = st_save(tensors, metadata={"segdemo": json.dumps(meta)})
    return atomic_write_bytes(Path(path), data)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """temp file in the same folder -> write -> fsync -> rename -> fsync the folder."""
    try:
        replace_file(path, data)
    except OSError as e:
        raise CheckpointWriteError(
            e.errno,
            f"could not save {path.name} ({e.strerror or e}); the previous checkpoint is kept. "
            "Free some disk space and resume the run",
        ) from e
    fsync_folder(path.parent)
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The JSON metadata only, without touching the weights (cheap: reads the header)."""
    return _read_header(Path(path))[1]


def _read_header(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensor table, segdemo metadata) from a safetensors header, after checking its length."""
    with open(path, "rb") as f:
        head = f.read(8)
        n = _check_header_length(path, head, os.fstat(f.fileno()).st_size)
        header = f.read(n)
    try:
        table = json.loads(header)
        meta = json.loads(table.pop("__metadata__")["segdemo"])
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise CheckpointError(
            f"{path.name} is a safetensors file but not a segdemo checkpoint (no segdemo metadata)"
        ) from e
    _check_meta(path, meta)
    return table, meta


def load_checkpoint(path: str | Path, *, max_predict_bytes: int | None = None) -> Checkpoint:
    """Validate everything before building anything: format, config, names, shapes, dtypes, finiteness.

    The header's tensor table is compared with the tensors its config would build (counted on the meta
    device, no memory) before a byte of weights is read, so a small file that claims a huge model costs
    nothing. With max_predict_bytes, a model that would need more to predict one image is refused too.
    """
    from segdemo.core import budget

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise CheckpointError(
            f"{path.name} is {size / 2**20:.0f} MB; segdemo checkpoints are far smaller (limit "
            f"{MAX_FILE_BYTES / 2**20:.0f} MB)"
        )
    table, meta = _read_header(path)
    config, classes = _config_from_meta(path, meta)
    try:
        budget.check_model(config, max_predict_bytes, what=path.name)
    except budget.BudgetError as e:
        raise CheckpointError(str(e)) from None
    _check_table(path, table, budget.expected_state(config.model), size)
    data = path.read_bytes()
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error types for malformed files
        log.debug("safetensors could not read %s", path, exc_info=True)
        raise CheckpointError(f"{path.name} is damaged ({e}); use another checkpoint") from e
    return _rebuild(path, meta, config, classes, tensors)


def _config_from_meta(path: Path, meta: dict[str, Any]) -> tuple[RunConfig, ClassSet]:
    try:
        config = RunConfig.from_stored(meta["config"])
        config.validate()
        classes = ClassSet.from_dict(meta["classes"])
        expected_out = out_channels(config.train.loss, classes.num_classes)
        if config.model.num_classes != expected_out:
            raise ValueError("model output channels do not match the class list")
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as e:
        raise CheckpointError(f"{path.name} has a broken config ({e})") from e
    # the weights come from this file, never elsewhere
    config.model.pretrained, config.model.encoder_weights = False, None
    return config, classes


_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}
_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8}
_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def _check_table(path: Path, table: dict[str, Any], expected: dict[str, tuple], size: int) -> None:
    """The header's tensors are exactly the model's, with the right shapes and dtypes, inside the file."""
    weights = {k[len("model.") :]: v for k, v in table.items() if isinstance(k, str) and k.startswith("model.")}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path.name} does not match its own config: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    end = size - 8
    for k, (shape, dtype) in expected.items():
        entry = weights[k]
        try:
            got_shape, got_dtype = tuple(int(d) for d in entry["shape"]), str(entry["dtype"])
            start, stop = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path.name}: the entry for tensor {k} is malformed") from e
        want = _DTYPES.get(dtype, str(dtype))
        if got_shape != shape or got_dtype != want:
            raise CheckpointError(
                f"{path.name}: tensor {k} is {got_shape} {_NAMES.get(got_dtype, got_dtype)}, "
                f"expected {shape} {_NAMES[want]}"
            )
        n = 1
        for d in shape:
            n *= d
        if not 0 <= start <= stop <= end or stop - start != n * _ITEMSIZE.get(want, 4):
            raise CheckpointError(
                f"{path.name}: tensor {k} points outside the file or has the wrong length; the file is damaged"
            )


def _check_header_length(path: Path, head: bytes, size: int) -> int:
    # A safetensors file starts with its header's length, little-endian: one whose low byte is 0x80 (a header
    # of 128, 384, 640... bytes) starts like a pickle, so only a length that cannot be a header means "pickle".
    n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
    plausible = n is not None and 2 <= n <= min(MAX_HEADER_BYTES, size - 8)
    if not plausible and (head[:2] == b"PK" or head[:1] == b"\x80"):
        raise CheckpointError(
            f"{path.name} looks like a PyTorch pickle (.pt/.pth). Pickles can run code when loaded, so "
            "segdemo refuses them; use a .safetensors checkpoint saved by segdemo"
        )
    if len(head) < 8:
        raise CheckpointError(f"{path.name} is too short to be a checkpoint")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_BYTES or n > size - 8:
        raise CheckpointError(
            f"{path.name} has a header of {n} bytes, which is oversized or past the end of the "
            "file; it is not a segdemo checkpoint"
        )
    return n


def _check_meta(path: Path, meta: Any) -> None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path.name} is not a segdemo checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{path.name} is segdemo checkpoint version {meta.get('version')}; this segdemo reads version {VERSION}"
        )


def _rebuild(
    path: Path, meta: dict[str, Any], config: RunConfig, classes: ClassSet, tensors: dict[str, torch.Tensor]
) -> Checkpoint:
    model = build_model(config.model)
    expected = model.state_dict()
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    for k, ref in expected.items():
        t = weights[k]
        if t.shape != ref.shape or t.dtype != ref.dtype:  # the table said so; the bytes must agree
            raise CheckpointError(
                f"{path.name}: tensor {k} is {tuple(t.shape)} {t.dtype}, expected {tuple(ref.shape)} {ref.dtype}"
            )
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(
                f"{path.name}: tensor {k} holds NaN or infinite values; the run diverged. "
                "Use an earlier checkpoint or a lower learning rate"
            )
    model.load_state_dict(weights, strict=True)
    model.eval()
    extra = {k: v for k, v in tensors.items() if not k.startswith("model.")}
    return Checkpoint(model=model, config=config, classes=classes, meta=meta, extra=extra)


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder means its best checkpoint (else its last); a file is itself."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"{p} holds no best.safetensors or last.safetensors; is it a run folder?")
    if not p.exists():
        raise CheckpointError(f"no checkpoint or run folder at {p}")
    return p
