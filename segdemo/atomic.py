"""One way to write a file: a temp file in the same folder, renamed over the target, so a reader (or a
crash) sees the old file or the new one, never a part. Checkpoints, logs, job records, the owner-token
secret, the zip marker and the app's picture cache all write through replace_file()."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def replace_file(path: Path, data: bytes, *, fsync: bool = True) -> Path:
    """Write to a temp file in the same folder, then rename it over `path`. `fsync` first makes the bytes
    durable (checkpoints, logs; a cache needs not). The file is private to this user (mkstemp's 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (after replace_file, for files that must survive a power cut)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
