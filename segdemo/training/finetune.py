"""How a pretrained encoder trains: its own learning rate, frozen BatchNorm statistics on small batches,
or not at all (instant mode)."""

from __future__ import annotations

from typing import Any, cast

import torch

from segdemo.core.config import RunConfig
from segdemo.core.model import encoder_parameters

BN_FROZEN_BELOW = 16  # batches smaller than this keep a pretrained encoder's BatchNorm statistics (measured:
# bench/README.md, "Fine-tuning the ImageNet encoder"); "train" or "frozen" in the config decides it by hand


def param_groups(net: torch.nn.Module, cfg: RunConfig) -> list[dict[str, Any]]:
    """Two groups when the encoder is pretrained, as fine-tuning codebases do: the encoder at encoder_lr times
    the rate (its ImageNet features need only nudging), the decoder at the rate itself; `lr_scale` is what
    the loop multiplies each step's rate by. A frozen encoder (instant mode) is not in the optimiser at all."""
    enc = encoder_parameters(net) if cfg.model.pretrained else set()
    decoder = [q for q in net.parameters() if id(q) not in enc]
    if not enc:
        return [{"params": decoder, "lr_scale": 1.0}]
    groups: list[dict[str, Any]] = [{"params": decoder, "lr_scale": 1.0}]
    if not cfg.train.freeze_encoder:
        groups.append({"params": [q for q in net.parameters() if id(q) in enc], "lr_scale": cfg.train.encoder_lr})
    return groups


def encoder_training(net: torch.nn.Module, cfg: RunConfig) -> str:
    """Freeze what the config says of a pretrained encoder: all of it (instant mode) or its BatchNorm
    statistics ("auto": below BN_FROZEN_BELOW images a batch). Returns a note for the log."""
    if not hasattr(net, "frozen_bn") or not cfg.model.pretrained:
        return ""
    t = cfg.train
    if t.freeze_encoder:
        for q in cast(torch.nn.Module, net.encoder).parameters():
            q.requires_grad_(False)
    frozen = t.freeze_encoder or t.encoder_bn == "frozen" or (t.encoder_bn == "auto" and t.batch_size < BN_FROZEN_BELOW)
    net.frozen_bn = frozen  # type: ignore[assignment]  # a plain flag the encoder U-Nets read, not a submodule
    return "encoder frozen" if t.freeze_encoder else f"encoder BatchNorm {'frozen' if frozen else 'trained'}"


def optimiser(net: torch.nn.Module, cfg: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over param_groups; fused: one kernel for all parameters instead of ~10 small ops each (same maths,
    same state keys)."""
    return torch.optim.AdamW(
        param_groups(net, cfg),
        lr=cfg.train.learning_rate,
        weight_decay=cfg.train.weight_decay,
        fused=device.type in ("cpu", "cuda"),
    )
