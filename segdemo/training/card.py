"""What a checkpoint's card says the model learnt from (no server paths)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segdemo.core.config import RunConfig
from segdemo.data.base import Splits


def source_name(source: str) -> str:
    """A data source as a checkpoint's card names it: no server paths, only the data's own name."""
    if source == "builtin" or source.startswith("oxford-pet"):
        return source.split(":")[0]
    return Path(source).name


def trained_on(splits: Splits, cfg: RunConfig) -> dict[str, Any]:
    """The card's data: its description, name, split sizes and the training images' statistics."""
    from segdemo.training.familiar import training_stats

    return {
        "description": splits.description or cfg.data.source,
        "source": source_name(cfg.data.source),
        "train_images": len(splits.train),
        "val_images": len(splits.val),
        "images": training_stats(splits.train),
    }
