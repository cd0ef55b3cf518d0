"""Pick device, precision and memory format for training by measuring them on this machine.

bf16 autocast and channels_last make a U-Net 2-3x faster on a CPU with native bf16 (AVX-512 BF16,
AMX) and over 10x slower on one without (AVX2 emulates it). Which one we are on is a measurement,
not an assumption: "auto" times a few real training steps of the actual model in each candidate mode.
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segdemo.config import ModelConfig, TrainConfig
from segdemo.errors import ConfigError
from segdemo.model import build_model


@dataclass(frozen=True)
class Speedups:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None = plain fp32
    channels_last: bool
    note: str  # what was chosen and why, shown to the user

    @property
    def use_grad_scaler(self) -> bool:
        return self.autocast_dtype == torch.float16 and self.device.type == "cuda"


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no GPU is visible; use --device cpu or auto")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def choose_speedups(model_cfg: ModelConfig, train_cfg: TrainConfig, image_size: int) -> Speedups:
    device = pick_device(train_cfg.device)
    prec, cl = train_cfg.precision, train_cfg.channels_last
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if prec != "auto" and cl != "auto":
        return Speedups(device, dtypes[prec], cl == "on", f"{prec}{' + channels_last' if cl == 'on' else ''} (as set)")
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        dtype = dtypes[prec] if prec != "auto" else dtype
        return Speedups(
            device,
            dtype,
            cl != "off",
            f"{'fp32' if dtype is None else str(dtype)[6:]} autocast "
            f"{'+ channels_last ' if cl != 'off' else ''}on {torch.cuda.get_device_name()}",
        )
    candidates = [(None, False), (None, True)]
    if cpu_has_native_bf16():
        candidates += [(torch.bfloat16, True), (torch.bfloat16, False)]
    if prec != "auto":
        candidates = [(d, c) for d, c in candidates if d == dtypes[prec]] or [
            (dtypes[prec], False),
            (dtypes[prec], True),
        ]
    if cl != "auto":
        candidates = [(d, c) for d, c in candidates if c == (cl == "on")] or [(None, cl == "on")]
    if len(candidates) == 1:
        d, c = candidates[0]
        return Speedups(device, d, c, _label(d, c) + " (only candidate)")
    timings = _measure_cpu(_key(model_cfg), image_size, tuple(candidates), torch.get_num_threads())
    best = min(timings, key=timings.get)
    base = timings[(None, False)] if (None, False) in timings else max(timings.values())
    why = "" if cpu_has_native_bf16() else "; bf16 skipped: this CPU has no native bf16"
    return Speedups(
        device, best[0], best[1], f"{_label(*best)} on CPU (measured {base / timings[best]:.2f}x vs plain fp32{why})"
    )


def _label(dtype, cl: bool) -> str:
    return ("fp32" if dtype is None else "bf16" if dtype == torch.bfloat16 else "fp16") + (
        " + channels_last" if cl else ""
    )


def _key(cfg: ModelConfig) -> tuple:
    return (cfg.encoder, cfg.depth, cfg.width, cfg.upsampling, cfg.num_classes)


@functools.lru_cache(maxsize=32)  # a measurement of this machine, not user state: safe to share
def _measure_cpu(model_key: tuple, image_size: int, candidates: tuple, threads: int = 0) -> dict:
    """Seconds per 4-image training step for each candidate; `threads` only keys the cache (the answer
    depends on how many threads torch uses, which the caller has set)."""
    encoder, depth, width, upsampling, num_classes = model_key
    base = build_model(
        ModelConfig(encoder=encoder, depth=depth, width=width, upsampling=upsampling, num_classes=num_classes)
    )
    size = min(image_size, 128)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, size, size, generator=gen)
    y = torch.randint(0, max(num_classes, 2), (4, size, size), generator=gen)
    out = {}
    for dtype, cl in candidates:
        model = copy.deepcopy(base).train()
        xi = x.contiguous(memory_format=torch.channels_last) if cl else x
        if cl:
            model = model.to(memory_format=torch.channels_last)
        times = []
        for _ in range(3):  # first step warms up oneDNN's kernel choice; keep the faster of the rest
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = model(xi)
            loss = (
                F.cross_entropy(logits.float(), y.clamp(max=logits.shape[1] - 1))
                if logits.shape[1] > 1
                else logits.float().mean()
            )
            loss.backward()
            times.append(time.perf_counter() - t0)
            if times[0] > 3 * min(out.values(), default=float("inf")):
                break  # hopeless (emulated bf16): don't spend seconds confirming it
        out[(dtype, cl)] = min(times[1:] or times)
    return out


def prepare_model(model: nn.Module, sp: Speedups) -> nn.Module:
    model = model.to(sp.device)
    return model.to(memory_format=torch.channels_last) if sp.channels_last else model
