"""Data: open_dataset() turns DataConfig.source into train/val (and maybe test) pairs, check_source() reports on it.

cfg.source is one of: "builtin"; "oxford-pet" or "oxford-pet:ROOT"; a folder dataset; a .zip of one. Each kind
is declared once in sources.SOURCES. Sources are imported lazily: segdemo.imageio imports this package, and
torchvision is slow to load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segdemo.atomic import replace_file
from segdemo.data.base import IGNORE, ClassSet, DataError, PairSource, Splits, SubsetSource
from segdemo.data.config import DataConfig

if TYPE_CHECKING:
    from segdemo.data.check import CheckReport

__all__ = [
    "IGNORE",
    "CHOICES",
    "ClassSet",
    "DataError",
    "PairSource",
    "Splits",
    "check_source",
    "open_dataset",
    "parse_source",
]

CHOICES = "builtin, oxford-pet (or oxford-pet:FOLDER), a dataset folder (images/ + masks/), or a .zip of one"
ZIP_MARKER = ".segdemo-zip.json"  # written beside an extraction so a resumed run reuses it


def extract_for_run(zip_path: Path, workdir: Path) -> tuple[Path, list[str]]:
    """Unpack into workdir/data once (a resumed run reuses it); return the root and skipped entries."""
    from segdemo.data.zipdata import dataset_root, extract_zip

    dest = workdir / "data"
    st = zip_path.stat()
    stamp = {"zip": str(zip_path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    marker = dest / ZIP_MARKER
    if marker.is_file():
        try:
            old = json.loads(marker.read_text())
            if {k: old.get(k) for k in stamp} == stamp:
                return dataset_root(dest), list(old.get("skipped", []))
        except (OSError, ValueError, AttributeError):
            pass
        shutil.rmtree(dest)  # our own earlier extraction (it carries our marker), of another zip
    elif dest.exists() and any(dest.iterdir()):
        raise DataError(f"{dest} already exists and is not empty; use a new run folder to unpack {zip_path.name}")
    skipped: list[str] = []
    root = extract_zip(zip_path, dest, skipped=skipped)
    replace_file(marker, json.dumps({**stamp, "skipped": skipped}).encode(), fsync=False)  # whole or absent
    return root, skipped


def skipped_note(zip_name: str, skipped: list[str]) -> str:
    shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
    return f"{len(skipped)} entries of {zip_name} were not unpacked (system files or nested archives): {shown}"


def _cap_train(splits: Splits, cfg: DataConfig) -> Splits:
    """cfg.max_train_images: keep a seeded sample of the training pairs for quick runs."""
    n, cap = len(splits.train), cfg.max_train_images
    if cap is None or n <= cap:
        return splits
    keep = sorted(np.random.default_rng(cfg.seed).permutation(n)[: max(cap, 1)].tolist())
    splits.train = SubsetSource(splits.train, keep)
    splits.notes.append(f"training on {len(keep)} of {n} training pairs (max_train_images)")
    return splits


def parse_source(source: str) -> tuple[str, str]:
    """(the source's id in SOURCES, its argument); DataError for a string no source takes."""
    from segdemo.data.sources import SOURCES

    s = (source or "").strip()
    for src in SOURCES:
        arg = src.parse(s)
        if arg is not None:
            return src.id, arg
    p = Path(s).expanduser()
    if s and (p.exists() or "/" in s or "\\" in s):
        what = "is not a folder or a .zip file" if p.exists() else "does not exist"
        raise DataError(f"data source {s} {what}; choose {CHOICES}")
    raise DataError(f"unknown data source {s!r}; choose {CHOICES}")


def open_dataset(cfg: DataConfig, workdir: Path | None = None) -> Splits:
    """Open cfg.source; a .zip is unpacked into workdir/data (workdir is required for it)."""
    from segdemo.data.sources import SOURCES

    kind, arg = parse_source(cfg.source)
    return _cap_train(SOURCES[kind].open(arg, cfg, workdir), cfg)


def check_source(cfg: DataConfig, workdir: Path | None = None, max_pairs: int | None = None) -> CheckReport:
    """Check whatever cfg.source is; never raises for bad data (the report says what is wrong)."""
    from segdemo.data.check import failed_report
    from segdemo.data.sources import SOURCES

    try:
        kind, arg = parse_source(cfg.source)
        return SOURCES[kind].check(arg, cfg, workdir, max_pairs)
    except DataError as e:
        return failed_report(cfg.source, str(e))


def with_skipped(rep: CheckReport, zip_path: str, skipped: list[str]) -> CheckReport:
    from segdemo.data.check import ZIP_SKIPPED

    if skipped:
        rep.warn(ZIP_SKIPPED, skipped_note(Path(zip_path).name, skipped))
    return rep
