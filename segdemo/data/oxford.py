"""Oxford-IIIT Pet in torchvision's on-disk layout: trimaps to trimap or binary classes.

torchvision.datasets.OxfordIIITPet fetches the data when cfg.download is set; an existing copy is
read directly from the same layout (ROOT/oxford-iiit-pet/images, annotations/trimaps, the split
lists), which skips torchvision's slow import.

Trimap values: 1 pet, 2 background, 3 border. "trimap" mode gives background 0, pet 1, border 2;
"binary" mode gives background 0, pet 1, and the border ignored (255): it is where the annotators
were unsure. Val is a seeded split of the official trainval list; test is the official test list.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from segdemo.data.base import IGNORE, ClassSet, DataError, PairSource, Splits, SubsetSource, seeded_split
from segdemo.data.config import DataConfig
from segdemo.imageio import align_mask, load_image_oriented, load_mask_raw

log = logging.getLogger(__name__)

ENV_ROOT = "SEGDEMO_OXFORD_ROOT"
TRIMAP_CLASSES = ClassSet(("background", "pet", "border"), ((40, 40, 40), (230, 150, 40), (90, 170, 240)))
BINARY_CLASSES = ClassSet(("background", "pet"), ((40, 40, 40), (230, 150, 40)))


def default_root() -> Path:
    """$SEGDEMO_OXFORD_ROOT, else ~/.cache/segdemo/oxford-pet."""
    env = os.environ.get(ENV_ROOT)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "segdemo" / "oxford-pet"


def trimap_lut(mode: str) -> np.ndarray:
    """(256,) uint8 lookup from trimap value to class id; anything unexpected is ignored."""
    lut = np.full(256, IGNORE, np.uint8)
    lut[1], lut[2] = 1, 0  # pet, background
    lut[3] = 2 if mode == "trimap" else IGNORE
    return lut


class OxfordPetSource(PairSource):
    """Photos and trimaps listed by an official split file."""

    def __init__(self, base: Path, ids: list[str], mode: str):
        self.base, self.ids, self.lut = base, ids, trimap_lut(mode)

    def __len__(self) -> int:
        return len(self.ids)

    def name(self, i: int) -> str:
        return self.ids[i]

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        stem = self.ids[i]
        iname, mname = f"images/{stem}.jpg", f"annotations/trimaps/{stem}.png"
        image, orientation = load_image_oriented(self.base / iname, iname)
        raw, _ = load_mask_raw(self.base / mname, mname)
        if raw.ndim == 3:
            raw = raw[..., 0]
        mask = self.lut[np.clip(raw, 0, 255).astype(np.uint8)]
        return image, align_mask(mask, image.shape, orientation, mask_name=mname, image_name=iname)


def _read_split(base: Path, split: str) -> list[str]:
    path = base / "annotations" / f"{split}.txt"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"{path} could not be read ({e.strerror}); the Oxford-IIIT Pet copy is incomplete") from None
    return [ln.split()[0] for ln in lines if ln.strip() and not ln.startswith("#")]


def _locate(root: Path) -> Path:
    """torchvision's root is the folder that holds oxford-iiit-pet/; accept the inner folder too."""
    if root.name == "oxford-iiit-pet" and (root / "images").is_dir() and not (root / "oxford-iiit-pet").exists():
        return root.parent
    return root


def _download(root: Path) -> None:
    """Let torchvision fetch the data into root/oxford-iiit-pet (the layout read here)."""
    from torchvision.datasets import OxfordIIITPet  # slow to import, so only when downloading

    try:
        for split in ("trainval", "test"):
            OxfordIIITPet(root=str(root), split=split, target_types="segmentation", download=True)
    except Exception as e:  # urllib, socket, checksum and torchvision's own errors all mean "no data"
        log.debug("downloading Oxford-IIIT Pet failed", exc_info=True)
        raise DataError(
            f"could not download Oxford-IIIT Pet (no internet?): {type(e).__name__}: {e}; put a copy at {root}"
        ) from None


def open_oxford_pet(root: str | Path, cfg: DataConfig) -> Splits:
    """Open (or, with cfg.download, fetch) Oxford-IIIT Pet at root/oxford-iiit-pet."""
    if cfg.pet_mode not in ("trimap", "binary"):
        raise DataError(f"pet mode must be trimap or binary, got {cfg.pet_mode!r}")
    root = _locate(Path(root).expanduser())
    base = root / "oxford-iiit-pet"
    found = (base / "images").is_dir() and (base / "annotations" / "trimaps").is_dir()
    if not found and not cfg.download:
        raise DataError(
            f"Oxford-IIIT Pet is not in {base} (looked for images/ and annotations/trimaps/ there); "
            "pass download (--download) when online to fetch it, or put a copy there"
        )
    if not found:
        _download(root)
    trainval, test_ids = _read_split(base, "trainval"), _read_split(base, "test")
    if len(trainval) < 2:
        raise DataError(f"{base}/annotations/trainval.txt lists {len(trainval)} images; at least 2 are needed")
    whole = OxfordPetSource(base, trainval, cfg.pet_mode)
    tr, va = seeded_split(len(trainval), cfg.val_fraction, cfg.seed)
    test = OxfordPetSource(base, test_ids, cfg.pet_mode) if test_ids else None
    classes = TRIMAP_CLASSES if cfg.pet_mode == "trimap" else BINARY_CLASSES
    return Splits(
        train=SubsetSource(whole, tr),
        val=SubsetSource(whole, va),
        classes=classes,
        test=test,
        description=f"Oxford-IIIT Pet ({cfg.pet_mode}): {len(tr)} train / {len(va)} val / "
        f"{len(test_ids)} test photos, classes {', '.join(classes.names)}",
        notes=[
            f"val is {len(va)} of the {len(trainval)} trainval photos (val_fraction {cfg.val_fraction}, "
            f"seed {cfg.seed}); test is the official test list"
        ]
        + (["border pixels are ignored in binary mode"] if cfg.pet_mode == "binary" else []),
    )
