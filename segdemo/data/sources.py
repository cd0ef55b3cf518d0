"""Data sources, declared once in SOURCES: how a source string is recognised, opened and checked, the label the
Train tab shows and how the page's "training images" applies to it. open_dataset(), check_source(), the Train
tab, Compare and the instructor view read it: adding a source is one entry here (and its test)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from segdemo.data.base import DataError, Splits
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
    cfg.max_train_images = n


# -- a .zip of a dataset folder -------------------------------------------------------------------------


def _zip_parse(s: str) -> str | None:
    if not s.lower().endswith(".zip"):
        return None
    p = Path(s).expanduser()
    if not p.is_file():
        raise DataError(f"zip file {p} does not exist; check the path")
    return str(p)


def _zip_open(arg: str, cfg: DataConfig, workdir: Path | None) -> Splits:
    from segdemo.data import extract_for_run, skipped_note
    from segdemo.data.folder import open_folder

    if workdir is None:
        raise DataError(f"{Path(arg).name} needs a run folder to be unpacked into; pass a workdir")
    root, skipped = extract_for_run(Path(arg), Path(workdir))
    splits = open_folder(root, cfg)
    if skipped:
        splits.notes.append(skipped_note(Path(arg).name, skipped))
    return splits


def _zip_check(arg: str, cfg: DataConfig, workdir: Path | None, max_pairs: int | None) -> CheckReport:
    from segdemo.data import extract_for_run, with_skipped
    from segdemo.data.check import check_dataset
    from segdemo.data.zipdata import extract_zip

    if workdir is not None:
        root, skipped = extract_for_run(Path(arg), Path(workdir))
        return with_skipped(check_dataset(root, cfg, name=arg, max_pairs=max_pairs), arg, skipped)
    with tempfile.TemporaryDirectory(prefix="segdemo-check-") as tmp:
        skipped = []
        root = extract_zip(arg, Path(tmp) / "data", skipped=skipped)
        return with_skipped(check_dataset(root, cfg, name=arg, max_pairs=max_pairs), arg, skipped)


def _cap_for_page(cfg: DataConfig, n: int) -> None:
    cfg.max_train_images = n  # one's own photos: a cap (the caller fills in the uploaded file's path)


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
        from segdemo.data import parse_source

        return SOURCES[parse_source(cfg.source)[0]]
    except DataError:
        return None


def page_source(value: str) -> Source:
    """A page's (or the /train API's) dataset value, old names included, as its registry entry."""
    for src in SOURCES:
        if value == src.id or value in src.aliases:
            return src
    return SOURCES[value]  # ConfigError naming the choices
