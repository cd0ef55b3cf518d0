"""Data sources: open_dataset() turns DataConfig.source into train/val (and maybe test) pairs.

cfg.source is one of: "builtin"; "oxford-pet" or "oxford-pet:ROOT"; a folder dataset; a .zip of one.
Sources are imported lazily: segdemo.imageio imports this package, and torchvision is slow to load.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segdemo.atomic import replace_file
from segdemo.config import DataConfig
from segdemo.data.base import IGNORE, ClassSet, DataError, PairSource, Splits, SubsetSource

if TYPE_CHECKING:
    from segdemo.data.check import CheckReport

__all__ = [
    "IGNORE",
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


def parse_source(source: str) -> tuple[str, str]:
    """("builtin" | "oxford-pet" | "zip" | "folder", argument); DataError for anything else."""
    s = (source or "").strip()
    if s == "builtin":
        return "builtin", ""
    if s == "oxford-pet" or s.startswith("oxford-pet:"):
        from segdemo.data.oxford import default_root

        root = s.partition(":")[2].strip()
        return "oxford-pet", root or str(default_root())
    p = Path(s).expanduser()
    if s.lower().endswith(".zip"):
        if not p.is_file():
            raise DataError(f"zip file {p} does not exist; check the path")
        return "zip", str(p)
    if s and p.is_dir():
        return "folder", str(p)
    if s and (p.exists() or "/" in s or "\\" in s):
        what = "is not a folder or a .zip file" if p.exists() else "does not exist"
        raise DataError(f"data source {s} {what}; choose {CHOICES}")
    raise DataError(f"unknown data source {s!r}; choose {CHOICES}")


def _extract_for_run(zip_path: Path, workdir: Path) -> tuple[Path, list[str]]:
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


def _skipped_note(zip_name: str, skipped: list[str]) -> str:
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


def open_dataset(cfg: DataConfig, workdir: Path | None = None) -> Splits:
    """Open cfg.source; a .zip is unpacked into workdir/data (workdir is required for it)."""
    kind, arg = parse_source(cfg.source)
    if kind == "builtin":
        from segdemo.data.builtin import open_builtin

        return _cap_train(open_builtin(cfg), cfg)
    if kind == "oxford-pet":
        from segdemo.data.oxford import open_oxford_pet

        return _cap_train(open_oxford_pet(arg, cfg), cfg)
    from segdemo.data.folder import open_folder

    if kind == "zip":
        if workdir is None:
            raise DataError(f"{Path(arg).name} needs a run folder to be unpacked into; pass a workdir")
        root, skipped = _extract_for_run(Path(arg), Path(workdir))
        splits = open_folder(root, cfg)
        if skipped:
            splits.notes.append(_skipped_note(Path(arg).name, skipped))
        return _cap_train(splits, cfg)
    return _cap_train(open_folder(arg, cfg), cfg)


def check_source(cfg: DataConfig, workdir: Path | None = None, max_pairs: int | None = None) -> CheckReport:
    """Check whatever cfg.source is; never raises for bad data (the report says what is wrong)."""
    from segdemo.data.check import check_dataset, failed_report

    source = cfg.source
    try:
        kind, arg = parse_source(cfg.source)
        if kind == "builtin":
            from segdemo.data.builtin import open_builtin

            return check_dataset(open_builtin(cfg), cfg, name="builtin", max_pairs=max_pairs)
        if kind == "oxford-pet":
            from segdemo.data.oxford import open_oxford_pet

            # Reading all 7,349 photos would take minutes; a few hundred show any systematic problem.
            return check_dataset(
                open_oxford_pet(arg, cfg), cfg, name=f"Oxford-IIIT Pet at {arg}", max_pairs=max_pairs or 300
            )
        if kind == "folder":
            return check_dataset(arg, cfg, name=arg, max_pairs=max_pairs)
        if workdir is not None:
            root, skipped = _extract_for_run(Path(arg), Path(workdir))
            return _with_skipped(check_dataset(root, cfg, name=arg, max_pairs=max_pairs), arg, skipped)
        from segdemo.data.zipdata import extract_zip

        with tempfile.TemporaryDirectory(prefix="segdemo-check-") as tmp:
            skipped: list[str] = []
            root = extract_zip(arg, Path(tmp) / "data", skipped=skipped)
            return _with_skipped(check_dataset(root, cfg, name=arg, max_pairs=max_pairs), arg, skipped)
    except DataError as e:
        return failed_report(source, str(e))


def _with_skipped(rep: CheckReport, zip_path: str, skipped: list[str]) -> CheckReport:
    from segdemo.data.check import ZIP_SKIPPED

    if skipped:
        rep.warn(ZIP_SKIPPED, _skipped_note(Path(zip_path).name, skipped))
    return rep
