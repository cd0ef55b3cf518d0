"""One optimiser step on one batch: the heart of the loop (Trainer._train_epoch calls it per batch)."""

from __future__ import annotations

from typing import cast

import torch

from segdemo.core.encoders import ENCODERS
from segdemo.core.model import LiteUNet
from segdemo.core.transforms import normalise
from segdemo.errors import ConfigError
from segdemo.training.instant import decoder_logits
from segdemo.training.parts import Parts


def train_step(
    p: Parts, images: torch.Tensor, masks: torch.Tensor, *, lr: float, epoch: int, indices: list[int]
) -> float:
    """One optimiser step on one batch (these dataset images); returns the batch's loss."""
    for g in p.opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    x = normalise(images.to(p.sp.device, non_blocking=True), p.cfg.data.mean, p.cfg.data.std)
    if p.sp.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = masks.to(p.sp.device, non_blocking=True)
    m = p.cfg.model
    if x.shape[0] == 1 and min(x.shape[-2:]) < 2 * (ENCODERS[m.encoder].stride or 2**m.depth):
        # BatchNorm needs more than one value per channel: a lone small image (one training photo) whose
        # deepest map is 1x1 goes in twice, which leaves its loss and gradient as they are
        x, y, indices = torch.cat([x, x]), torch.cat([y, y]), [*indices, *indices]
    with torch.autocast(
        p.sp.device.type, dtype=p.sp.autocast_dtype or torch.float32, enabled=p.sp.autocast_dtype is not None
    ):
        # instant mode (a cache) exists only for the Lite0 U-Net, whose encode/decode it splits
        logits = p.model(x) if p.cache is None else decoder_logits(cast(LiteUNet, p.net), p.cache, x, indices)
    loss = p.loss_fn(logits, y)
    if not torch.isfinite(loss):
        raise ConfigError(
            f"the loss became {float(loss)} at epoch {epoch}; the learning rate "
            f"{p.cfg.train.learning_rate:g} is too high for this setup. Lower it and start again"
        )
    p.opt.zero_grad(set_to_none=True)
    if p.scaler:
        p.scaler.scale(loss).backward()
        p.scaler.step(p.opt)
        p.scaler.update()
    else:
        loss.backward()
        p.opt.step()
    return loss.item()
