"""What a run asks of the machine it trains on: CPU threads, and one-off costs paid ahead of time."""

from __future__ import annotations

import os

import torch

from segdemo.core import speedups
from segdemo.core.config import RunConfig
from segdemo.training.distributed import World

# torch's thread count is process-wide: runs that overlap in one server restore this, not each other's value
_PROCESS_THREADS = speedups.PROCESS_THREADS


def cpu_training_threads(world: World | None = None) -> int:
    """Leave one core free for data loading, the UI and everything else on the machine (shared by the
    processes torchrun started on it).

    A small U-Net gains little from the last core, but when another process wants it, every one of the
    hundreds of parallel ops per step waits for the thread that lost its core: on 2 busy cores a step
    measured several times slower with 2 threads than with 1 (bench/README.md). OMP_NUM_THREADS, when set, wins.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return _PROCESS_THREADS
    here = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if world and world.distributed else 1
    return max(1, min(_PROCESS_THREADS, ((os.cpu_count() or 1) - 1) // here))


def warm_up(cfg: RunConfig | None = None) -> None:
    """Pay a first run's one-off costs ahead of time, so a server's first Train click starts at once:
    torch.optim's first optimiser imports torch._dynamo (seconds), and the built-in data takes a few seconds
    to draw (then shared, read-only, by every run that asks for the same split); the Label tab's fill loads
    its ImageNet encoder once (1.5 s here), which its first Fill would otherwise wait for. The app calls this
    in a background thread at start; it leaves torch's thread count alone."""
    from segdemo.core.config import quick_cpu_preset
    from segdemo.data.builtin import open_builtin

    cfg = cfg or quick_cpu_preset()
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    if cfg.data.source == "builtin":
        open_builtin(cfg.data)
    from segdemo.core import fill

    fill.preload()
