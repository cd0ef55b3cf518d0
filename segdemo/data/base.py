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
        return cls(tuple(str(n) for n in d["names"]), tuple((int(c[0]), int(c[1]), int(c[2])) for c in d["colors"]))

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
    warnings: list[str] = field(default_factory=list)  # what makes a score on this split thin (coverage_notes)


def seeded_split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Shuffle 0..n-1 with a fixed seed and cut off val_fraction (at least one of each when n >= 2)."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_val = min(max(1, round(n * val_fraction)), n - 1) if n >= 2 else 0
    return sorted(order[n_val:]), sorted(order[:n_val])


FEW_PHOTOS = 3  # a class on fewer photos than this cannot be both learnt and fairly scored


def stratified_split(presence: np.ndarray, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """seeded_split that holds out every class the data allows: (train indices, val indices).

    presence is (n photos, K classes) bool: which classes each photo has labelled pixels of. Rarest class
    first, each class on two or more photos gets a validation photo (one with the most classes not yet held
    out, then in seeded order), never a class's last training photo; the rest is filled in seeded order up
    to val_fraction. Covering classes may hold out more than val_fraction, up to a third of the photos.
    """
    presence = np.asarray(presence, bool)
    n = len(presence)
    if n < 2 or presence.ndim != 2:
        return seeded_split(n, val_fraction, seed)
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    cap = min(n - 1, max(n_val, n // 3))
    in_train = presence.sum(0)  # photos of each class still on the training side
    val: list[int] = []

    def can_hold_out(i: int) -> bool:
        return i not in val and bool(np.all(in_train[presence[i]] >= 2))

    def hold_out(i: int) -> None:
        nonlocal in_train
        val.append(i)
        in_train = in_train - presence[i]

    for c in np.argsort(presence.sum(0), kind="stable"):
        if len(val) >= cap or presence.sum(0)[c] < 2 or presence[val, c].any():
            continue
        covered = presence[val].any(0) if val else np.zeros(presence.shape[1], bool)
        candidates = [i for i in order if presence[i, c] and can_hold_out(i)]
        if candidates:
            hold_out(max(candidates, key=lambda i: int((presence[i] & ~covered).sum())))
    for i in order:
        if len(val) >= n_val:
            break
        if can_hold_out(i):
            hold_out(i)
    if not val:  # every photo is some class's last: hold out one anyway, in seeded order
        hold_out(order[0])
    held = set(val)
    return [i for i in range(n) if i not in held], sorted(val)


def coverage_notes(
    names: Sequence[str], presence: np.ndarray, val_idx: Sequence[int] | None = None, few: int = FEW_PHOTOS
) -> list[str]:
    """Sentences about classes painted on too few photos (and, given the split, where they went)."""
    presence = np.asarray(presence, bool)
    n = len(presence)
    if n == 0 or presence.ndim != 2:
        return []
    in_val = presence[list(val_idx)].sum(0) if val_idx is not None and len(val_idx) else np.zeros(len(names), int)
    out = []
    for c, name in enumerate(names):
        k = int(presence[:, c].sum())
        if k == 0 or k >= few:
            continue
        where = ""
        if val_idx is not None:
            v = int(in_val[c])
            where = (
                f" ({v} held out to score the model, {k - v} to learn from)"
                if v
                else " (it cannot also be held out, so no validation score covers it)"
            )
        out.append(
            f"{name!r} is labelled on only {k} of {n} photo{'s' if n != 1 else ''}{where}; "
            f"label it on at least {few} photos for a model and a score you can trust"
        )
    return out
