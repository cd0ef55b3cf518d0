"""Data: open_dataset() turns DataConfig.source into train/val (and maybe test) pairs, check_source() reports on it.

cfg.source is one of: "builtin"; "oxford-pet" or "oxford-pet:ROOT"; a folder dataset; a .zip of one. Each kind
is declared once in sources.SOURCES, which also holds these functions; this face re-exports them.
"""

from __future__ import annotations

from segdemo.data.base import IGNORE, ClassSet, DataError, PairSource, Splits
from segdemo.data.sources import CHOICES, check_source, open_dataset, parse_source

__all__ = [
    "CHOICES",
    "IGNORE",
    "ClassSet",
    "DataError",
    "PairSource",
    "Splits",
    "check_source",
    "open_dataset",
    "parse_source",
]
