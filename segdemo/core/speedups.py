"""Pick device, precision and memory format for training by measuring them on this machine.

bf16 autocast and channels_last make a U-Net 2-3x faster on a CPU with native bf16 (AVX-512 BF16,
AMX) and over 10x slower on one without (AVX2 emulates it). Which one we are on is a measurement,
not an assumption: "auto" times a few real training steps of the actual model in each candidate mode.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segdemo.core.config import ModelConfig, TrainConfig
from segdemo.core.encoders import build_model
from segdemo.errors import ConfigError

PROBE_IMAGES = 4  # a timed probe step's batch
PROBE_MAX_SIDE = 128  # and its largest side: bigger runs are estimated from it by pixel count
PROCESS_THREADS = torch.get_num_threads()  # what torch chose at start (OMP_NUM_THREADS, else the cores)

# Set by a caller that pays for probes on someone's behalf (the app's planner, per address): called once
# before each probe that is not already cached, it may raise LimitError instead.
PROBE_GATE: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("probe_gate", default=None)

# torch's thread count is shared (new threads start with the last value set), so trainings and probes agree
# on it here: the first training to start sets it, the last to end restores PROCESS_THREADS, and a probe
# changes it only while no training runs (and puts it back only if none started meanwhile).
_threads_lock = threading.Lock()
_trainings = 0


def hold_training_threads(n: int) -> None:
    """A CPU training starts: use n threads (release_training_threads when it ends)."""
    global _trainings
    with _threads_lock:
        _trainings += 1
        torch.set_num_threads(n)


def release_training_threads() -> None:
    global _trainings
    with _threads_lock:
        _trainings = max(0, _trainings - 1)
        if _trainings == 0:
            torch.set_num_threads(PROCESS_THREADS)


@contextlib.contextmanager
def probe_threads(n: int) -> Iterator[None]:
    """Measure with n threads, unless a training runs: then with its count, left as it is."""
    with _threads_lock:
        changed = _trainings == 0 and torch.get_num_threads() != n
        if changed:
            before = torch.get_num_threads()
            torch.set_num_threads(n)
    try:
        yield
    finally:
        if changed:
            with _threads_lock:
                if _trainings == 0:
                    torch.set_num_threads(before)


@contextlib.contextmanager
def probes_charged_to(charge: Callable[[], None]) -> Iterator[None]:
    """Within the block, the first probe not already cached calls `charge()` first (which may raise
    LimitError); the probes after it in the same block (one plan measures a mode or two) are free."""
    charged = False

    def once() -> None:
        nonlocal charged
        if not charged:
            charge()
            charged = True

    token = PROBE_GATE.set(once)
    try:
        yield
    finally:
        PROBE_GATE.reset(token)


def _gate() -> None:
    gate = PROBE_GATE.get()
    if gate is not None:
        gate()


@dataclass(frozen=True)
class Speedups:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None = plain fp32
    channels_last: bool
    note: str  # what was chosen and why, shown to the user
    step_s: float | None = None  # the measured seconds of one PROBE_IMAGES-image step at probe_side, if timed
    probe_side: int = 0

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
    dtypes: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if prec != "auto" and cl != "auto":
        return Speedups(device, dtypes[prec], cl == "on", f"{prec}{' + channels_last' if cl == 'on' else ''} (as set)")
    if device.type == "cuda":
        dtype: torch.dtype | None = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        dtype = dtypes[prec] if prec != "auto" else dtype
        return Speedups(
            device,
            dtype,
            cl != "off",
            f"{'fp32' if dtype is None else str(dtype)[6:]} autocast "
            f"{'+ channels_last ' if cl != 'off' else ''}on {torch.cuda.get_device_name()}",
        )
    candidates: list[tuple[torch.dtype | None, bool]] = [(None, False), (None, True)]
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
    side = min(image_size, PROBE_MAX_SIDE)
    timings = _measure_cpu(_key(model_cfg), side, tuple(candidates), torch.get_num_threads())
    best = min(timings, key=lambda k: timings[k])
    base = timings[(None, False)] if (None, False) in timings else max(timings.values())
    why = "" if cpu_has_native_bf16() else "; bf16 skipped: this CPU has no native bf16"
    return Speedups(
        device,
        best[0],
        best[1],
        f"{_label(*best)} on CPU (measured {base / timings[best]:.2f}x vs plain fp32{why})",
        timings[best],
        side,
    )


def measured_step_seconds(model_cfg: ModelConfig, sp: Speedups, image_size: int) -> tuple[int, int, float]:
    """(side, images, seconds) of one timed training step of this model in sp's mode: what choose_speedups
    measured, else a probe of that one mode (cached per model and size)."""
    side = min(image_size, PROBE_MAX_SIDE)
    if sp.step_s is not None and sp.probe_side == side:
        return side, PROBE_IMAGES, sp.step_s
    mode = (sp.autocast_dtype, sp.channels_last)
    if sp.device.type == "cuda":
        return side, PROBE_IMAGES, _measure_cuda(_key(model_cfg), side, mode)
    return side, PROBE_IMAGES, _measure_cpu(_key(model_cfg), side, (mode,), torch.get_num_threads())[mode]


def _label(dtype, cl: bool) -> str:
    return ("fp32" if dtype is None else "bf16" if dtype == torch.bfloat16 else "fp16") + (
        " + channels_last" if cl else ""
    )


def _key(cfg: ModelConfig) -> tuple:
    return (cfg.encoder, cfg.depth, cfg.width, cfg.upsampling, cfg.num_classes, cfg.block)


@functools.lru_cache(maxsize=256)  # a measurement of this machine, not user state: safe to share
def _measure_cpu(model_key: tuple, size: int, candidates: tuple, threads: int = 0) -> dict:
    """Seconds per PROBE_IMAGES-image training step at size x size for each candidate; `threads` only keys
    the cache (the answer depends on how many threads torch uses, which the caller has set)."""
    _gate()  # only a probe not in the cache gets here
    base = _probe_model(model_key)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(PROBE_IMAGES, 3, size, size, generator=gen)
    y = torch.randint(0, max(model_key[4], 2), (PROBE_IMAGES, size, size), generator=gen)
    out: dict[tuple[torch.dtype | None, bool], float] = {}
    for dtype, cl in candidates:
        model = copy.deepcopy(base).train()
        xi = x.contiguous(memory_format=torch.channels_last) if cl else x
        if cl:
            model = to_channels_last(model)
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


@functools.lru_cache(maxsize=8)
def _measure_cuda(model_key: tuple, size: int, mode: tuple) -> float:
    """Seconds per PROBE_IMAGES-image training step on the GPU (synchronised; the fastest of 5 after warm-up)."""
    _gate()
    dtype, cl = mode
    model = _probe_model(model_key).cuda().train()
    x = torch.randn(PROBE_IMAGES, 3, size, size, device="cuda")
    y = torch.randint(0, max(model_key[4], 2), (PROBE_IMAGES, size, size), device="cuda")
    if cl:
        model, x = to_channels_last(model), x.contiguous(memory_format=torch.channels_last)
    times = []
    for _ in range(6):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
        F.cross_entropy(logits.float(), y.clamp(max=logits.shape[1] - 1)).backward()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def _probe_model(model_key: tuple) -> nn.Module:
    encoder, depth, width, upsampling, num_classes, block = model_key
    return build_model(
        ModelConfig(
            encoder=encoder, depth=depth, width=width, upsampling=upsampling, num_classes=num_classes, block=block
        )
    )


def prepare_model(model: nn.Module, sp: Speedups) -> nn.Module:
    model = model.to(sp.device)
    return to_channels_last(model) if sp.channels_last else model


def to_channels_last(model: nn.Module) -> nn.Module:
    """The model's 4-d weights in NHWC order (Module.to takes memory_format; torch's stubs omit it)."""
    return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
