"""Instant mode: the ImageNet encoder stays frozen, so each training image's features are computed once and
kept (per run, within a byte budget); only the decoder trains, from the cached features, which makes a step
several times cheaper than a full one and gives a first prediction within seconds.

The cache is sound only because nothing between the image and the features changes: the encoder's weights and
BatchNorm statistics are frozen, and instant mode trains without augmentation (the same crop each epoch)."""

from __future__ import annotations

import torch

from segdemo.core.model import LiteUNet, pad_to_multiple

CACHE_BYTES = 512 << 20  # at most this much of features per run (160 px crops: about 0.7 MB an image)


class FeatureCache:
    """Features of training images by dataset index, up to `max_bytes`; beyond it they are computed each time
    (still without gradients), so memory stays bounded whatever the dataset's size."""

    def __init__(self, max_bytes: int = CACHE_BYTES):
        self.max_bytes = max(0, int(max_bytes))
        self.bytes = 0
        self.items: dict[int, list[torch.Tensor]] = {}
        self.hits = self.misses = 0

    def features(self, net: LiteUNet, x: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
        """The encoder's 5 feature maps of the padded batch x (N, 3, H, W), whose rows are these dataset images."""
        missing = [j for j, i in enumerate(indices) if i not in self.items]
        fresh: dict[int, list[torch.Tensor]] = {}
        if missing:
            with torch.no_grad():
                maps = net.encode(x[missing])
            for row, j in enumerate(missing):
                one = [f[row : row + 1].detach().clone() for f in maps]
                fresh[j] = one
                size = sum(f.numel() * f.element_size() for f in one)
                if self.bytes + size <= self.max_bytes:
                    self.items[indices[j]] = one
                    self.bytes += size
        self.hits += len(indices) - len(missing)
        self.misses += len(missing)
        rows = [fresh[j] if j in fresh else self.items[i] for j, i in enumerate(indices)]
        return [torch.cat([r[level] for r in rows]) for level in range(5)]


def decoder_logits(net: LiteUNet, cache: FeatureCache, x: torch.Tensor, indices: list[int]) -> torch.Tensor:
    """What net(x) gives, with the frozen encoder's part taken from (or put into) the cache."""
    h, w = x.shape[-2:]
    xp = pad_to_multiple(x, 32)
    return net.decode(xp, cache.features(net, xp, indices))[..., :h, :w]
