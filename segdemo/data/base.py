"""What every data source yields: image/mask pairs plus the class names and colours.

Masks everywhere inside segdemo are uint8 (H, W) arrays of class ids 0..K-1, with IGNORE (255) for
pixels that count in neither loss nor metrics. Sources remap their own "void" value to IGNORE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segdemo.errors import DataError  # noqa: F401  (re-exported: data sources raise it)
from segdemo.palette import distinct_colors

IGNORE = 255


@dataclass(frozen=True)
class ClassSet:
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]

    def __post_init__(self):
        if len(self.names) != len(self.colors):
            raise DataError(f"{len(self.names)} class names but {len(self.colors)} colours")
        if not 1 <= len(self.names) <= 254:
            raise DataError(f"need between 1 and 254 classes, got {len(self.names)}")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @classmethod
    def default(cls, names: Sequence[str]) -> ClassSet:
        """Names with the default colours: distinct for any number of classes (segdemo.palette)."""
        return cls(tuple(names), distinct_colors(len(names)))

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "colors": [list(c) for c in self.colors]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassSet:
        return cls(tuple(str(n) for n in d["names"]), tuple(tuple(int(v) for v in c) for c in d["colors"]))

    def palette(self) -> np.ndarray:
        """(256, 3) uint8 lookup: class id -> colour, IGNORE -> white, unknown -> black."""
        lut = np.zeros((256, 3), np.uint8)
        lut[: self.num_classes] = np.array(self.colors, np.uint8)
        lut[IGNORE] = (255, 255, 255)
        return lut


class PairSource:
    """A list of (image, mask) pairs. Subclasses implement __len__, name() and load()."""

    def __len__(self) -> int:
        raise NotImplementedError

    def name(self, i: int) -> str:
        raise NotImplementedError

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (image (H, W, 3) uint8 RGB, mask (H, W) uint8 class ids with IGNORE)."""
        raise NotImplementedError


class ArraySource(PairSource):
    """Pairs held in memory (the built-in data, or a cache of decoded files)."""

    def __init__(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], names: Sequence[str]):
        self.images, self.masks, self.names = list(images), list(masks), list(names)

    def __len__(self) -> int:
        return len(self.images)

    def name(self, i: int) -> str:
        return self.names[i]

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.images[i], self.masks[i]


class SubsetSource(PairSource):
    def __init__(self, base: PairSource, indices: Sequence[int]):
        self.base, self.indices = base, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def name(self, i: int) -> str:
        return self.base.name(self.indices[i])

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.base.load(self.indices[i])


class CachedSource(PairSource):
    """Decode each pair once and keep it, up to max_bytes: epochs after the first read no files (or, for
    a dataset too large to keep, only the pairs past the cap)."""

    def __init__(self, base: PairSource, max_bytes: int = 1 << 30):
        self.base = base
        self.max_bytes = max_bytes
        self.bytes = 0
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.base)

    def name(self, i: int) -> str:
        return self.base.name(i)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        hit = self._cache.get(i)
        if hit is not None:
            return hit
        pair = self.base.load(i)
        n = pair[0].nbytes + pair[1].nbytes
        if self.bytes + n <= self.max_bytes:
            self._cache[i] = pair
            self.bytes += n
        return pair


@dataclass
class Splits:
    """A dataset ready to train on: train/val (and maybe test) pairs and their classes."""

    train: PairSource
    val: PairSource
    classes: ClassSet
    test: PairSource | None = None
    description: str = ""
    notes: list[str] = field(default_factory=list)


def seeded_split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Shuffle 0..n-1 with a fixed seed and cut off val_fraction (at least one of each when n >= 2)."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_val = min(max(1, round(n * val_fraction)), n - 1) if n >= 2 else 0
    return sorted(order[n_val:]), sorted(order[:n_val])
