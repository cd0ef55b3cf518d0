"""What a run needs to go on exactly where it stopped: the loop state, and the resumable checkpoint that holds
it beside the weights, the optimiser's moments and every RNG state (last.safetensors).

A run resumes after an epoch (a restart, a Stop then Train again) or mid-epoch (a turn that ended, see
segdemo/training/turns.py); either way it then computes what one unbroken run computes."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from segdemo.core import checkpoint as ckpt
from segdemo.core.config import ModelConfig, RunConfig
from segdemo.core.speedups import Speedups, choose_speedups, pick_device
from segdemo.data.base import ClassSet
from segdemo.errors import ConfigError
from segdemo.training import distributed
from segdemo.training.distributed import World


@dataclass
class LoopState:
    """Where a run stands. The resumable checkpoint stores it, with the weights, optimiser and RNG states."""

    epoch: int = 0  # the last complete (trained and evaluated) epoch
    step: int = 0  # optimiser steps so far; the learning-rate schedule follows it
    batch: int = 0  # batches already trained of epoch `epoch + 1` when a chunk paused mid-epoch
    epoch_loss: float = 0.0  # that partial epoch's loss sum, images and seconds, so its record stays whole
    epoch_images: int = 0
    epoch_seconds: float = 0.0
    seconds: float = 0.0  # training time of the earlier sessions of this run (resume, chunks)
    best_miou: float | None = None
    best_epoch: int | None = None
    best_val_loss: float | None = None  # breaks a tie in val mIoU (scribbled labels: 1.0 from the first epoch)
    history: list[dict] = field(default_factory=list)
    precision: list | None = None  # [dtype name or None, channels_last] chosen at the start, kept on resume
    last_metrics: dict | None = None  # the newest epoch's validation metrics, saved beside every checkpoint
    plateau_scale: float = 1.0  # the "plateau" schedule's factor on the learning rate, and its count of
    plateau_bad: int = 0  # epochs since the best val mIoU
    best_score: float | None = None  # what the kept epoch won by (selection_words); None: best_miou's


def comparable(m: ModelConfig) -> ModelConfig:
    """A model config as resume compares it: where the starting weights came from does not matter any more."""
    return replace(m, pretrained=False, encoder_weights=None, weights_from=None)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_last(
    path: Path,
    *,
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    cfg: RunConfig,
    classes: ClassSet,
    state: LoopState,
    trained_on: dict,
) -> None:
    """Everything resume needs: weights, optimiser moments, loop state, RNG states."""
    extra: dict[str, torch.Tensor] = {}
    params = [q for g in opt.param_groups for q in g["params"]]
    for i, q in enumerate(params):
        for k, v in opt.state.get(q, {}).items():
            extra[f"optim.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    extra["rng.torch"] = torch.get_rng_state()
    training_state = {
        **asdict(state),
        "param_groups": groups,
        "rng_numpy": np_random_state(),
        "rng_python": py_random_state(),
    }
    ckpt.save_checkpoint(
        path,
        net,
        cfg,
        classes,
        metrics=state.last_metrics,
        training_state=training_state,
        extra_tensors=extra,
        trained_on=trained_on,
    )


def read_state(path: Path, config: RunConfig) -> tuple[LoopState, ckpt.Checkpoint]:
    """The loop state of the run's resumable checkpoint, and the checkpoint (restore() reads the rest)."""
    if not path.exists():
        raise ckpt.CheckpointError(f"nothing to resume: {path} does not exist")
    saved = ckpt.load_checkpoint(path)
    ts = saved.meta.get("training_state")
    if not ts:
        raise ckpt.CheckpointError(f"{path.name} has no training state to resume from")
    if comparable(saved.config.model) != comparable(config.model):
        raise ConfigError(
            "the run's saved model settings differ from these; resume with the same settings or start a new run folder"
        )
    known = {f.name for f in fields(LoopState)}
    return LoopState(**{k: v for k, v in ts.items() if k in known}), saved


def restore(saved: ckpt.Checkpoint, *, net: torch.nn.Module, opt: torch.optim.Optimizer, device: torch.device) -> None:
    """Weights, optimiser moments and groups, and the RNG states, as the checkpoint saved them."""
    ts = saved.meta["training_state"]
    net.load_state_dict(saved.model.state_dict())
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        st = {k.split(".", 2)[2]: v.to(device) for k, v in saved.extra.items() if k.startswith(f"optim.{i}.")}
        if st:
            if "step" in st:
                st["step"] = st["step"].cpu()  # Adam keeps its step counter on the CPU
            opt.state[p] = st
    for g, kept in zip(opt.param_groups, ts["param_groups"], strict=True):
        g.update({k: tuple(v) if isinstance(v, list) else v for k, v in kept.items()})
    torch.set_rng_state(saved.extra["rng.torch"])
    np.random.set_state(np_random_from_json(ts["rng_numpy"]))
    random.setstate(py_random_from_json(ts["rng_python"]))


def speedups_for(cfg: RunConfig, state: LoopState, world: World) -> Speedups:
    """Measure (or take what the run measured when it began: a resumed run keeps its precision, so a run
    in chunks computes what one run would); every process uses process 0's choice."""
    if state.precision is None:
        sp = choose_speedups(cfg.model, cfg.train, cfg.data.crop)
        state.precision = [None if sp.autocast_dtype is None else str(sp.autocast_dtype)[6:], sp.channels_last]
    else:
        dtype, cl = state.precision
        sp = Speedups(
            device=pick_device(cfg.train.device),
            autocast_dtype=None if dtype is None else getattr(torch, dtype),
            channels_last=bool(cl),
            note=f"{dtype or 'fp32'}{' + channels_last' if cl else ''} (kept from the run's start)",
        )
    return distributed.from_main(sp, world)


def np_random_state() -> list[Any]:
    name, keys, pos, has_gauss, cached = cast(tuple[Any, ...], np.random.get_state())  # legacy: a tuple
    return [name, keys.tolist(), pos, has_gauss, cached]


def np_random_from_json(s: list[Any]) -> tuple[Any, ...]:
    return (s[0], np.array(s[1], dtype=np.uint32), s[2], s[3], s[4])


def py_random_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def py_random_from_json(s: list[Any]) -> tuple[Any, ...]:
    return (s[0], tuple(s[1]), s[2])


def truncate_metrics_log(path: Path, last_epoch: int) -> None:
    """On resume keep only epochs up to the checkpoint's: no duplicates, no gaps, no torn last line."""
    if not path.exists():
        return
    keep: list[dict] = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a crash mid-write
        if (
            isinstance(rec, dict)
            and rec.get("epoch", 0) <= last_epoch
            and rec.get("epoch") not in {r["epoch"] for r in keep}
        ):
            keep.append(rec)
    ckpt.atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in keep).encode())
