"""A run's training images as batches: augmented, in the same order on every resume."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from segdemo.core import budget
from segdemo.core.config import RunConfig
from segdemo.core.losses import check_fits, out_channels
from segdemo.core.transforms import train_transform
from segdemo.data.base import IGNORE, ArraySource, CachedSource, DataError, PairSource, Splits
from segdemo.errors import ConfigError
from segdemo.training.distributed import World

INSTANT_STEPS = 16  # an instant-mode epoch has at least this many steps


class TrainDataset(Dataset):
    """Applies the train augmentation; returns uint8 HWC image and int64 mask (normalised later, per batch).

    Each image's augmentation is seeded by (run seed, epoch, index): the same on resume, in any order, in
    any DataLoader worker (workers would otherwise each replay one shared random stream)."""

    def __init__(self, source: PairSource, cfg: RunConfig) -> None:
        self.source = source
        self.tf = train_transform(cfg.data)
        self.seed = cfg.train.seed
        self.epoch = 0  # set by the trainer before each epoch's loader starts

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.source.load(i)
        self.tf.set_random_seed(((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i) % 2**32)
        out = self.tf(image=image, mask=mask)
        return torch.from_numpy(out["image"]), torch.from_numpy(out["mask"].astype(np.int64))


def fit_splits(splits: Splits, cfg: RunConfig, *, world: World, memory_budget: int | None) -> tuple[Splits, int]:
    """The run's splits checked against the loss and the memory budget, training and validation decoded once
    within it (not every epoch), and the bytes instant mode may keep features in. Sets the model's class
    count from the data."""
    classes = splits.classes
    unfit = check_fits(cfg.train.loss, classes.num_classes)
    if unfit:
        raise ConfigError(unfit)
    if len(splits.train) == 0 or len(splits.val) == 0:
        raise DataError("the dataset needs at least one training and one validation pair")
    cfg.model.num_classes = out_channels(cfg.train.loss, classes.num_classes)
    mem = budget.check_training(cfg, memory_budget or budget.server_budget())
    room, feature_room = max(0, (memory_budget or budget.server_budget()) - mem), 0
    if cfg.train.freeze_encoder:  # instant mode: half the room for features, the same crop every epoch
        cfg.data.augment = False
        if world.distributed:
            raise ConfigError("instant mode (a frozen encoder) trains in one process; run it without torchrun")
        room, feature_room = room // 2, room // 2
    if not isinstance(splits.train, ArraySource):  # decode files once, not every epoch, within the budget
        splits = replace(
            splits, train=CachedSource(splits.train, room * 3 // 4), val=CachedSource(splits.val, room // 4)
        )
    return splits, feature_room


def passes_per_epoch(cfg: RunConfig, n_train: int) -> int:
    """How many times an epoch goes through the training images: once, except in instant mode, whose steps
    are cheap (cached features, no augmentation) while each epoch's evaluation and checkpoints are not, so
    a handful of labelled photos would otherwise get one step between two evaluations."""
    if not cfg.train.freeze_encoder:
        return 1
    return max(1, math.ceil(INSTANT_STEPS * cfg.train.batch_size / max(1, n_train)))


def steps_per_epoch(cfg: RunConfig, *, n_train: int, world: World, batch_size: int) -> int:
    """Optimiser steps in one epoch of this process: drop_last keeps BatchNorm away from 1-image batches, and
    each process sees 1/world of the images."""
    return max(1, math.ceil(n_train / world.size) * passes_per_epoch(cfg, n_train) // batch_size)


def pixel_counts(source: PairSource, num_classes: int) -> np.ndarray:
    counts = np.zeros(num_classes, np.int64)
    for i in range(len(source)):
        m = source.load(i)[1]
        counts += np.bincount(m[m != IGNORE].ravel(), minlength=num_classes)[:num_classes]
    return counts


def epoch_loader(
    dataset: TrainDataset,
    *,
    cfg: RunConfig,
    world: World,
    batch_size: int,
    epoch: int,
    skip_batches: int,
    pin_memory: bool,
) -> tuple[DataLoader, list[int]]:
    """This process's batches of `epoch`, in the same order on every resume: the shuffle is seeded by the
    epoch, augmentations by (epoch, image), so a run paused after `skip_batches` goes on exactly. Also returns
    which images the batches hold, in order (instant mode looks their features up by index)."""
    dataset.epoch = epoch
    sampler: DistributedSampler[int] = DistributedSampler(
        dataset, num_replicas=world.size, rank=world.rank, shuffle=True, seed=cfg.train.seed * 1_000_003
    )
    sampler.set_epoch(epoch)
    order = (list(sampler) * passes_per_epoch(cfg, len(dataset)))[skip_batches * batch_size :]
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=order,
        drop_last=True,
        num_workers=cfg.train.num_workers,
        pin_memory=pin_memory,
    )
    return loader, order
