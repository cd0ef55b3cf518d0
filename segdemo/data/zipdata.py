"""Safe extraction of a zipped folder dataset.

Every entry is vetted before anything is written (paths, links, encryption, name clashes, counts,
declared sizes); then entries are streamed in chunks while the real bytes are counted, because a
zip header's sizes can lie. Nested archives (.zip, .tar, .gz, ...) are skipped, not opened: a
dataset has no use for them and unpacking them recursively is how zip bombs multiply. __MACOSX/,
dotfiles and Thumbs.db/desktop.ini are skipped too. On any refusal everything written is removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import unicodedata
import zipfile
import zlib
from pathlib import Path

from segdemo.atomic import replace_file
from segdemo.data.base import DataError

CHUNK = 1 << 20
MAX_DEPTH = 32
NESTED_ARCHIVES = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".zst")
JUNK_NAMES = {"thumbs.db", "desktop.ini"}
_DRIVE = re.compile(r"^[A-Za-z]:")
_SPLIT_MARKERS = {"images", "masks", "train"}


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n:,} bytes"


def _is_dir(info: zipfile.ZipInfo) -> bool:
    return info.filename.replace("\\", "/").endswith("/")


def _parts(zip_name: str, name: str) -> list[str] | None:
    """Safe path components of an entry name; None for entries to skip; DataError for unsafe names."""
    norm = name.replace("\\", "/")  # Windows tools may write backslashes: treat them as separators
    if "\x00" in norm:
        raise DataError(f"{zip_name} has an entry with a NUL byte in its name; re-create the zip")
    if norm.startswith("/") or _DRIVE.match(norm):
        raise DataError(
            f"{zip_name} has an entry with an absolute path ({name!r}); zip the dataset folder with relative paths"
        )
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DataError(
            f"{zip_name} has an entry that points outside the folder ({name!r}); re-create the zip "
            "from the dataset folder itself"
        )
    if any(":" in p for p in parts):
        raise DataError(f"{zip_name} has an entry with ':' in its name ({name!r}); rename it")
    if len(parts) > MAX_DEPTH:
        raise DataError(f"{zip_name} has an entry nested {len(parts)} folders deep ({name!r}); flatten the dataset")
    if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts) or parts[-1].lower() in JUNK_NAMES:
        return None
    return parts


def _vet(
    zip_name: str,
    infos: list[zipfile.ZipInfo],
    max_entries: int,
    max_total_bytes: int,
    max_entry_bytes: int,
    skipped: list[str],
) -> list[tuple[zipfile.ZipInfo, list[str]]]:
    """Check every entry before writing anything; return (entry, path parts) to extract."""
    if len(infos) > max_entries:
        raise DataError(
            f"{zip_name} has {len(infos):,} entries, more than the limit of {max_entries:,}; "
            "split the dataset or raise the limit"
        )
    plan: list[tuple[zipfile.ZipInfo, list[str]]] = []
    seen: dict[str, str] = {}  # case- and Unicode-folded path -> name as written, files and folders alike
    files: set[str] = set()
    dirs: set[str] = set()
    declared = 0
    for info in infos:
        parts = _parts(zip_name, info.filename)
        if parts is None:
            skipped.append(info.filename)
            continue
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise DataError(f"{zip_name} contains a symbolic link ({info.filename!r}); zip real files only")
        if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) and stat.S_IFMT(mode):
            raise DataError(f"{zip_name} contains a special file ({info.filename!r}); zip real files only")
        if info.flag_bits & 0x1:
            raise DataError(
                f"{zip_name} is password-protected ({info.filename!r} is encrypted); zip it again without a password"
            )
        is_dir = _is_dir(info)
        if not is_dir and parts[-1].lower().endswith(NESTED_ARCHIVES):
            skipped.append(info.filename)  # nested archives are never opened (see the module docstring)
            continue
        for depth in range(1, len(parts) + 1):
            key = unicodedata.normalize("NFC", "/".join(parts[:depth])).casefold()
            written = "/".join(parts[:depth])
            entry_is_dir = is_dir or depth < len(parts)
            if key in seen and seen[key] == written and not entry_is_dir and depth == len(parts):
                raise DataError(f"{zip_name} holds {info.filename!r} twice; re-create the zip")
            if key in seen and (seen[key] != written or not entry_is_dir or key in files):
                raise DataError(
                    f"{zip_name} has entries whose names clash on case-insensitive disks: "
                    f"{seen[key]!r} and {info.filename!r}; rename one of them"
                )
            seen[key] = written
            (dirs if entry_is_dir else files).add(key)
        if not is_dir:
            if info.file_size > max_entry_bytes:
                raise DataError(
                    f"{zip_name}: {info.filename!r} unpacks to {_mb(info.file_size)}, more than the "
                    f"limit of {_mb(max_entry_bytes)} per file; shrink the file"
                )
            declared += info.file_size
        plan.append((info, parts))
    if declared > max_total_bytes:
        raise DataError(
            f"{zip_name} unpacks to {_mb(declared)}, more than the limit of {_mb(max_total_bytes)}; "
            "use fewer or smaller images"
        )
    return plan


def _safe_dir(dest: Path, parts: list[str], created: list[Path]) -> Path:
    """Create folders one level at a time, refusing anything that is not a real folder inside dest."""
    d = dest
    for part in parts:
        d = d / part
        try:
            os.mkdir(d)
            created.append(d)
        except FileExistsError:
            pass
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode):
            raise DataError(f"cannot unpack into {d.name}: it exists and is not a folder")
    if not d.resolve().is_relative_to(dest):
        raise DataError(f"cannot unpack into {d}: it resolves outside the destination folder")
    return d


def _write(
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    target: Path,
    zip_name: str,
    budget: list[int],
    max_entry_bytes: int,
    max_total_bytes: int,
    created: list[Path],
) -> None:
    """Stream one entry to a new file (never following or overwriting), counting the real bytes."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(target, flags, 0o644)
    except FileExistsError:
        raise DataError(
            f"cannot unpack {info.filename!r} from {zip_name}: {target.name} already exists in the destination folder"
        ) from None
    created.append(target)
    written = 0
    with os.fdopen(fd, "wb") as out, zf.open(info) as src:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            budget[0] += len(chunk)
            if written > max_entry_bytes:
                raise DataError(
                    f"{zip_name}: {info.filename!r} unpacks to more than {_mb(max_entry_bytes)} "
                    "(its header claims less); this looks like a zip bomb, so nothing was kept"
                )
            if budget[0] > max_total_bytes:
                raise DataError(
                    f"{zip_name} unpacks to more than {_mb(max_total_bytes)} (its headers claim "
                    "less); this looks like a zip bomb, so nothing was kept"
                )
            out.write(chunk)


def dataset_root(dest: Path) -> Path:
    """dest, or the single top-level folder (up to 3 levels) that holds images/, masks/ or train/."""
    d = dest
    for _ in range(3):
        children = [p for p in d.iterdir() if not p.name.startswith(".")]
        if {p.name.lower() for p in children if p.is_dir()} & _SPLIT_MARKERS:
            return d
        if len(children) == 1 and children[0].is_dir():
            d = children[0]
        else:
            break
    return d if {p.name.lower() for p in d.iterdir() if p.is_dir()} & _SPLIT_MARKERS else dest


def extract_zip(
    zip_path: str | Path,
    dest_dir: str | Path,
    *,
    max_entries: int = 5000,
    max_total_bytes: int = 1_000_000_000,
    max_entry_bytes: int = 200_000_000,
    skipped: list[str] | None = None,
) -> Path:
    """Extract a zipped folder dataset into dest_dir and return the dataset root inside it.

    Entries skipped on purpose (junk, dotfiles, nested archives) are appended to `skipped` when given.
    """
    zip_path = Path(zip_path)
    zip_name = zip_path.name
    skipped = [] if skipped is None else skipped
    if not zip_path.is_file():
        raise DataError(f"{zip_path} does not exist; check the path of the zip file")
    dest_given = Path(dest_dir)
    dest_existed = dest_given.exists()
    created: list[Path] = []
    try:
        try:
            zf = zipfile.ZipFile(zip_path)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError):
            raise DataError(
                f"{zip_name} is not a valid zip file; re-create it (e.g. 'Compress' the dataset folder)"
            ) from None
        with zf:
            plan = _vet(zip_name, zf.infolist(), max_entries, max_total_bytes, max_entry_bytes, skipped)
            dest_given.mkdir(parents=True, exist_ok=True)
            dest = dest_given.resolve(strict=True)
            budget = [0]
            for info, parts in plan:
                if _is_dir(info):
                    _safe_dir(dest, parts, created)
                    continue
                parent = _safe_dir(dest, parts[:-1], created)
                if not (parent / parts[-1]).resolve().is_relative_to(dest):
                    raise DataError(f"{zip_name}: {info.filename!r} would land outside the destination folder")
                try:
                    _write(
                        zf,
                        info,
                        parent / parts[-1],
                        zip_name,
                        budget,
                        max_entry_bytes,
                        max_total_bytes,
                        created,
                    )
                except (zipfile.BadZipFile, EOFError, zlib.error, ValueError) as e:
                    raise DataError(
                        f"{zip_name} is not a valid zip file ({info.filename!r} is damaged: {e}); re-create it"
                    ) from None
                except NotImplementedError:
                    raise DataError(
                        f"{zip_name} uses a compression method that cannot be read "
                        f"({info.filename!r}); re-zip it with standard (deflate) compression"
                    ) from None
        return dataset_root(dest)
    except BaseException as e:
        _cleanup(created, dest_given if not dest_existed else None)
        if isinstance(e, OSError):
            raise DataError(
                f"could not unpack {zip_name} into {dest_given} ({e.strerror or e}); "
                "check that the folder is writable and the disk has space"
            ) from None
        raise


def _cleanup(created: list[Path], made_dest: Path | None) -> None:
    """Remove what this extraction wrote (files, then folders, newest first); never anything else."""
    for p in reversed(created):
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                os.rmdir(p)
            else:
                os.unlink(p)
        except OSError:
            pass  # a folder that holds files we did not write stays
    if made_dest is not None:
        try:
            os.rmdir(made_dest)
        except OSError:
            pass


ZIP_MARKER = ".segdemo-zip.json"  # written beside an extraction so a resumed run reuses it


def extract_for_run(zip_path: Path, workdir: Path) -> tuple[Path, list[str]]:
    """Unpack into workdir/data once (a resumed run reuses it); return the root and skipped entries."""
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
