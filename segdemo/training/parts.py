"""What setting up a run builds (Parts) and what one epoch's training hands to its evaluation (EpochTrain)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from segdemo.core.config import RunConfig
from segdemo.core.losses import SegLoss
from segdemo.core.speedups import Speedups
from segdemo.data.base import ClassSet, Splits
from segdemo.training.batches import TrainDataset
from segdemo.training.distributed import World
from segdemo.training.instant import FeatureCache


@dataclass(kw_only=True)
class Parts:
    """What setting up a run builds; the loop only reads it."""

    cfg: RunConfig
    splits: Splits
    classes: ClassSet
    model: torch.nn.Module  # what trains (wrapped in DistributedDataParallel under torchrun)
    net: torch.nn.Module  # the plain U-Net inside it: what checkpoints save and evaluation runs
    opt: torch.optim.Optimizer
    loss_fn: SegLoss
    scaler: torch.amp.GradScaler | None
    sp: Speedups
    world: World
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    dataset: TrainDataset
    previews_at: list[int]
    cache: FeatureCache | None = None  # instant mode: the frozen encoder's features of the training images
    train_probe: list[int] = field(default_factory=list)  # scored each epoch when the val split is small
    selection: str = ""
    trained_on: dict[str, Any] = field(default_factory=dict)  # what the checkpoints say the model learnt from


@dataclass(kw_only=True)
class EpochTrain:
    loss_sum: float
    images: int
    seconds: float
    lr: float
    stopped: bool = False  # a Stop or the time limit came first
    paused: bool = False  # the turn ended mid-epoch (its step budget ran out, or others wait)
    steps: int = 0  # optimiser steps taken in this session of the epoch
