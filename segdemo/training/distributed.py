"""Multi-process training under torchrun: join the process group it describes, shard, sum.

torchrun starts one process per GPU (or per CPU share with gloo) and sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; this module only joins that group. It never launches processes itself. With
one process (no torchrun, the app, the tests) every helper here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only this process writes checkpoints, logs and curves, and reports events."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def current() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "auto") -> World:
    """Join the group torchrun describes; one process (WORLD_SIZE unset or 1) stays alone.

    NCCL for one GPU per process; gloo on CPUs, or when processes share a GPU (a smoke test of two processes
    on one card), or when SEGDEMO_DIST_BACKEND says so."""
    if not launched_by_torchrun():
        return World()
    if dist.is_initialized():
        return current()
    local = int(os.environ.get("LOCAL_RANK", 0))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
    on_gpu = device != "cpu" and torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(local % torch.cuda.device_count())
    own_gpu = on_gpu and torch.cuda.device_count() >= local_size
    backend = os.environ.get("SEGDEMO_DIST_BACKEND") or ("nccl" if own_gpu else "gloo")
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=10))
    return current()


def leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _reduce_device(device: torch.device) -> torch.device:
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_all(t: torch.Tensor, world: World, device: torch.device) -> torch.Tensor:
    """The element-wise sum over all processes (counts and confusion matrices add; never average them)."""
    if not world.distributed:
        return t
    x = t.detach().to(_reduce_device(device), dtype=torch.float64 if t.is_floating_point() else torch.int64)
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x.to(t.device, t.dtype)


def any_of(flag: bool, world: World, device: torch.device) -> bool:
    """True everywhere when any process says so: a Stop or a time limit seen by one ends the step for all."""
    if not world.distributed:
        return flag
    return bool(sum_all(torch.tensor([int(flag)]), world, device).item())


def from_main(obj, world: World):
    """Process 0's value of `obj` everywhere (e.g. the precision its measurement chose)."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def share_buffers(net: torch.nn.Module, world: World) -> None:
    """Give every process process 0's BatchNorm statistics: each process's last step updated its own, and
    evaluation must score the model that process 0 saves."""
    if world.distributed:
        for b in net.buffers():
            dist.broadcast(b.data, src=0)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
