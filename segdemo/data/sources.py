"""Data sources, declared once in SOURCES: how a source string is recognised, opened and checked, the label the
Train tab shows and how the page's "training images" applies to it. open_dataset(), check_source(), the Train
tab, Compare and the instructor view read it: adding a source is one entry here (and its test)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segdemo.data.base import DataError, Splits, SubsetSource
from segdemo.data.config import DataConfig
from segdemo.registry import Registry

if TYPE_CHECKING:
    from segdemo.data.check import CheckReport

OXFORD_PAIRS_CHECKED = 300  # reading all 7,349 photos would take minutes; a few hundred show any systematic problem


@dataclass(frozen=True)
class Source:
    id: str  # DataConfig.source's kind, and the /train API's dataset value
    label: str  # the Train tab's choice
    parse: Callable[[str], str | None]  # a source string -> this source's argument, None: not this kind
    open: Callable[[str, DataConfig, Path | None], Splits]  # (argument, config, run folder) -> splits
    check: Callable[[str, DataConfig, Path | None, int | None], CheckReport]  # ... and at most this many pairs
    describe: Callable[[DataConfig], str]  # what a page may say the data is (never a server path)
    for_page: Callable[[DataConfig, int], None]  # the page's "training images" into the config
    pages: tuple[str, ...] = ("train",)
    aliases: tuple[str, ...] = ()  # older /train API values that still load


# -- built-in shapes ------------------------------------------------------------------------------------


def _builtin_open(arg: str, cfg: DataConfig, workdir: Path | None) -> Splits:
    from segdemo.data.builtin import open_builtin

    return open_builtin(cfg)


def _builtin_check(arg: str, cfg: DataConfig, workdir: Path | None, max_pairs: int | None) -> CheckReport:
    from segdemo.data.check import check_dataset

    return check_dataset(_builtin_open(arg, cfg, workdir), cfg, name="builtin", max_pairs=max_pairs)


def _builtin_for_page(cfg: DataConfig, n: int) -> None:
    cfg.source = "builtin"
    cfg.builtin_train, cfg.builtin_val = n, max(8, round(n / 6))  # made on the fly: the size, not a cap


# -- Oxford-IIIT Pet ------------------------------------------------------------------------------------


def _oxford_parse(s: str) -> str | None:
    if s != "oxford-pet" and not s.startswith("oxford-pet:"):
        return None
    from segdemo.data.oxford import default_root

    return s.partition(":")[2].strip() or str(default_root())


def _oxford_open(arg: str, cfg: DataConfig, workdir: Path | None) -> Splits:
    from segdemo.data.oxford import open_oxford_pet

    return open_oxford_pet(arg, cfg)


def _oxford_check(arg: str, cfg: DataConfig, workdir: Path | None, max_pairs: int | None) -> CheckReport:
    from segdemo.data.check import check_dataset

    splits = _oxford_open(arg, cfg, workdir)
    return check_dataset(splits, cfg, name=f"Oxford-IIIT Pet at {arg}", max_pairs=max_pairs or OXFORD_PAIRS_CHECKED)


def _oxford_for_page(cfg: DataConfig, n: int) -> None:
    from segdemo.data.oxford import ENV_ROOT

    root = os.environ.get(ENV_ROOT)
    cfg.source = f"oxford-pet:{root}" if root else "oxford-pet"
    cfg.download = not root  # no copy from the host: fetch it (needs internet)
    cfg.train_images = n


# -- a .zip of a dataset folder -------------------------------------------------------------------------


def _zip_parse(s: str) -> str | None:
    if not s.lower().endswith(".zip"):
        return None
    p = Path(s).expanduser()
    if not p.is_file():
        raise DataError(f"zip file {p} does not exist; check the path")
    return str(p)


def _zip_open(arg: str, cfg: DataConfig, workdir: Path | None) -> Splits:
    from segdemo.data.folder import open_folder
    from segdemo.data.zipdata import extract_for_run, skipped_note

    if workdir is None:
        raise DataError(f"{Path(arg).name} needs a run folder to be unpacked into; pass a workdir")
    root, skipped = extract_for_run(Path(arg), Path(workdir))
    splits = open_folder(root, cfg)
    if skipped:
        splits.notes.append(skipped_note(Path(arg).name, skipped))
    return splits


def _zip_check(arg: str, cfg: DataConfig, workdir: Path | None, max_pairs: int | None) -> CheckReport:
    from segdemo.data.check import check_dataset
    from segdemo.data.zipdata import extract_for_run, extract_zip

    if workdir is not None:
        root, skipped = extract_for_run(Path(arg), Path(workdir))
        return with_skipped(check_dataset(root, cfg, name=arg, max_pairs=max_pairs), arg, skipped)
    with tempfile.TemporaryDirectory(prefix="segdemo-check-") as tmp:
        skipped = []
        root = extract_zip(arg, Path(tmp) / "data", skipped=skipped)
        return with_skipped(check_dataset(root, cfg, name=arg, max_pairs=max_pairs), arg, skipped)


def _cap_for_page(cfg: DataConfig, n: int) -> None:
    cfg.train_images = n  # one's own photos: a cap (the caller fills in the uploaded file's path)


# -- a folder: images/ + masks/ -------------------------------------------------------------------------


def _folder_parse(s: str) -> str | None:
    return s if s and Path(s).expanduser().is_dir() else None


def _folder_open(arg: str, cfg: DataConfig, workdir: Path | None) -> Splits:
    from segdemo.data.folder import open_folder

    return open_folder(str(Path(arg).expanduser()), cfg)


def _folder_check(arg: str, cfg: DataConfig, workdir: Path | None, max_pairs: int | None) -> CheckReport:
    from segdemo.data.check import check_dataset

    return check_dataset(str(Path(arg).expanduser()), cfg, name=str(Path(arg).expanduser()), max_pairs=max_pairs)


def _file_name(cfg: DataConfig) -> str:
    return Path(cfg.source).name  # an upload's own file name; the folder around it is nobody's business


SOURCES: Registry[Source] = Registry(
    "data source",
    [
        Source(
            "builtin",
            "Built-in shapes (made on the fly, works offline)",
            parse=lambda s: "" if s == "builtin" else None,
            open=_builtin_open,
            check=_builtin_check,
            describe=lambda cfg: "built-in shapes",
            for_page=_builtin_for_page,
        ),
        Source(
            "zip",
            "My own dataset: a .zip with images/ and masks/",
            parse=_zip_parse,
            open=_zip_open,
            check=_zip_check,
            describe=_file_name,
            for_page=_cap_for_page,
        ),
        Source(
            "oxford-pet",
            "Oxford-IIIT Pet (photos of cats and dogs)",
            parse=_oxford_parse,
            open=_oxford_open,
            check=_oxford_check,
            describe=lambda cfg: f"Oxford-IIIT Pet ({cfg.pet_mode})",
            for_page=_oxford_for_page,
            aliases=("oxford",),
        ),
        Source(
            "folder",
            "A dataset folder on the server (images/ + masks/)",
            parse=_folder_parse,
            open=_folder_open,
            check=_folder_check,
            describe=_file_name,
            for_page=_cap_for_page,
            pages=(),  # a visitor never names a server path
        ),
    ],
)


def source_of(cfg: DataConfig) -> Source | None:
    """The registry entry a config's source string belongs to; None when no source takes it."""
    try:
        return SOURCES[parse_source(cfg.source)[0]]
    except DataError:
        return None


def page_source(value: str) -> Source:
    """A page's (or the /train API's) dataset value, old names included, as its registry entry."""
    for src in SOURCES:
        if value == src.id or value in src.aliases:
            return src
    return SOURCES[value]  # ConfigError naming the choices


CHOICES = "builtin, oxford-pet (or oxford-pet:FOLDER), a dataset folder (images/ + masks/), or a .zip of one"


def _cap_train(splits: Splits, cfg: DataConfig) -> Splits:
    """cfg.train_images: keep a seeded sample of the training pairs for quick runs."""
    n, cap = len(splits.train), cfg.train_images
    if cap is None or n <= cap:
        return splits
    keep = sorted(np.random.default_rng(cfg.seed).permutation(n)[: max(cap, 1)].tolist())
    splits.train = SubsetSource(splits.train, keep)
    splits.notes.append(f"training on {len(keep)} of {n} training pairs (train_images)")
    return splits


def parse_source(source: str) -> tuple[str, str]:
    """(the source's id in SOURCES, its argument); DataError for a string no source takes."""
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
    kind, arg = parse_source(cfg.source)
    return _cap_train(SOURCES[kind].open(arg, cfg, workdir), cfg)


def check_source(cfg: DataConfig, workdir: Path | None = None, max_pairs: int | None = None) -> CheckReport:
    """Check whatever cfg.source is; never raises for bad data (the report says what is wrong)."""
    from segdemo.data.check import failed_report

    try:
        kind, arg = parse_source(cfg.source)
        return SOURCES[kind].check(arg, cfg, workdir, max_pairs)
    except DataError as e:
        return failed_report(cfg.source, str(e))


def with_skipped(rep: CheckReport, zip_path: str, skipped: list[str]) -> CheckReport:
    from segdemo.data.check import ZIP_SKIPPED
    from segdemo.data.zipdata import skipped_note

    if skipped:
        rep.warn(ZIP_SKIPPED, skipped_note(Path(zip_path).name, skipped))
    return rep


def check_for_page(cfg: DataConfig, workdir: Path) -> tuple[CheckReport, DataConfig]:
    """check_source as the app shows it before training: (the report, the config that was checked).

    The built-in data is drawn from a seed, so it is checked on BUILTIN_CHECK_PAIRS pairs (the returned
    config, also cheap to draw samples from) while the report gives the sizes the run will use and carries
    no PARTIAL warning, which would be about the check and not about the data."""
    from segdemo.data.check import BUILTIN_CHECK_PAIRS, PARTIAL

    if cfg.source != "builtin":
        return check_source(cfg, workdir), cfg
    small = replace(cfg, builtin_train=min(cfg.builtin_train, BUILTIN_CHECK_PAIRS), builtin_val=8)
    report = check_source(small, workdir)
    report.pairs = {"train": int(cfg.builtin_train), "val": int(cfg.builtin_val)}
    report.warnings = [w for w in report.warnings if w.code != PARTIAL]
    return report, small
