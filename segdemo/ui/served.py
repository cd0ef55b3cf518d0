"""Files handed to the page (downloads, exports, GIFs, a label set's pictures): made once per thing, written
straight where Gradio serves them from, kept under a byte cap, and removed when their run expires."""

from __future__ import annotations

import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segdemo.server.jobs import Job

SERVED_BYTES = int(os.environ.get("SEGDEMO_SERVED_MB") or 2048) << 20  # downloads kept for serving, all together


class ServedFiles:
    """The files the app serves; `scratch(kind)` gives a fresh work folder to make one in."""

    def __init__(self, scratch: Callable[[str], Path]) -> None:
        self._scratch = scratch
        self._lock = threading.Lock()
        self._downloads: dict[str, list[Path]] = {}  # run id -> files handed out for download
        self._served: OrderedDict[tuple, Path] = OrderedDict()  # what a thing was served as (see served())

    def served(self, key: tuple, name: str, make: Callable[[Path], object], job: Job | None = None) -> str:
        """A file for a gr.File or picture output, made once per thing and handed out again while it lasts.

        `key` names the thing and its version (a run's checkpoint with its size and mtime, a set's zip with its
        set.json's); `make(dst)` writes it. The file is written straight to where Gradio serves it from (its
        cache, under a hash of the bytes), so the disk holds one copy, however often a page asks. Served files
        all together stay under SERVED_BYTES (the oldest go); a run's go when the run expires (`job`)."""
        from gradio.processing_utils import hash_file
        from gradio.utils import get_upload_folder
        from gradio_client.utils import strip_invalid_filename_characters

        with self._lock:
            hit = self._served.get(key)
            if hit is not None and hit.is_file():
                self._served.move_to_end(key)
                return str(hit)
        work = self._scratch("served")
        try:
            tmp = work / name
            make(tmp)
            dst = Path(get_upload_folder()) / hash_file(tmp) / strip_invalid_filename_characters(name)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(tmp, dst)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        with self._lock:
            self._served[key] = dst
            if job is not None:
                self._downloads.setdefault(job.id, []).append(dst)
            sizes = {k: _size(p) for k, p in self._served.items()}
            while len(self._served) > 1 and sum(sizes.values()) > SERVED_BYTES:
                old_key, old = self._served.popitem(last=False)
                sizes.pop(old_key)
                _remove_with_folder(old)
        return str(dst)

    def download_copy(self, job: Job, src: Path, name: str) -> str:
        """A run's file (its checkpoint) for a gr.File output, served to whoever has the link until the run
        expires; the same file asked for again is the same copy."""
        st = src.stat()
        key = ("copy", job.id, str(src), name, st.st_size, st.st_mtime_ns)
        return self.served(key, name, lambda dst: shutil.copyfile(src, dst), job)

    def forget_downloads(self, job: Any) -> None:
        with self._lock:
            paths = set(self._downloads.pop(job.id, []))
            for k in [k for k, p in self._served.items() if p in paths]:
                del self._served[k]
        for p in paths:
            _remove_with_folder(p)


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def _remove_with_folder(p: Path) -> None:
    p.unlink(missing_ok=True)
    try:
        p.parent.rmdir()  # the per-file (hash) folder, once empty
    except OSError:
        pass
