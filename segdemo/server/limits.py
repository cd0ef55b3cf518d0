"""Fair-use limits for a shared server: rates and quotas per client, slots with a per-client and a global cap.

A public server must not let one visitor lock everyone else out: minting thousands of sessions, holding
hundreds of live streams or uploading without end. These are small thread-safe counters keyed by a client
(an address, or a session's owner key); the UI and the job manager decide what the keys are.
Nothing here imports gradio.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import defaultdict, deque
from collections.abc import Mapping

from segdemo.errors import LimitError  # noqa: F401  (re-exported)


def client_address(headers: Mapping[str, str], peer: str | None) -> str:
    """The address limits are keyed by: the TCP peer, or behind a reverse proxy (a Hugging Face Space) the
    address that proxy saw, i.e. the entry it appended to X-Forwarded-For. Entries before it are whatever
    the client wrote, so they are never trusted. SEGDEMO_TRUSTED_PROXY_HOPS sets how many proxies to trust
    (default 1 on a Space, else 0)."""
    hops = int(os.environ.get("SEGDEMO_TRUSTED_PROXY_HOPS") or (1 if os.environ.get("SPACE_ID") else 0))
    if hops > 0:
        forwarded = [a.strip() for a in (headers.get("x-forwarded-for") or "").split(",") if a.strip()]
        if len(forwarded) >= hops:
            return forwarded[-hops][:64]
    return (peer or "unknown")[:64]


def _when(seconds: float) -> str:
    s = max(1, round(seconds))
    return f"{s} seconds" if s < 90 else f"{round(s / 60)} minutes"


class RateLimiter:
    """At most `limit` events per `window_s` seconds per key (a sliding window)."""

    def __init__(self, limit: int, window_s: float, what: str, max_keys: int = 50_000):
        self.limit, self.window_s, self.what, self.max_keys = int(limit), float(window_s), what, max_keys
        self._events: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def check(self, key: str, now: float | None = None) -> None:
        """Raise LimitError if `key`'s window is full, without counting an event."""
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._events.get(key)
            while q and now - q[0] >= self.window_s:
                q.popleft()
            if q and len(q) >= self.limit:
                wait = self.window_s - (now - q[0])
                raise LimitError(f"too many {self.what} from your address; try again in {_when(wait)}")

    def hit(self, key: str, now: float | None = None, factor: int = 1) -> None:
        """Count one event for `key`, or raise LimitError when its window is full (`factor` times the limit for
        a key an instructor vouched for)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._events[key]
            while q and now - q[0] >= self.window_s:
                q.popleft()
            if len(q) >= self.limit * factor:
                wait = self.window_s - (now - q[0])
                raise LimitError(f"too many {self.what} from your address; try again in {_when(wait)}")
            q.append(now)
            if len(self._events) > self.max_keys:  # forget idle keys so a flood of addresses costs no memory
                for k in [k for k, v in self._events.items() if not v or now - v[-1] >= self.window_s]:
                    del self._events[k]


class ByteQuota:
    """At most `limit` bytes (or files: unit="files") per `window_s` seconds per key (uploads)."""

    def __init__(self, limit: int, window_s: float, unit: str = "bytes"):
        self.limit, self.window_s, self.unit = int(limit), float(window_s), unit
        self._used: dict[str, deque[tuple[float, int]]] = defaultdict(deque)
        self._lock = threading.Lock()

    def take(self, key: str, n: int, now: float | None = None, factor: int = 1) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._used[key]
            while q and now - q[0][0] >= self.window_s:
                q.popleft()
            used = sum(b for _, b in q)
            if used + n > self.limit * factor:
                wait = self.window_s - (now - q[0][0]) if q else self.window_s
                amount = f"{used / 2**20:.0f} MB" if self.unit == "bytes" else f"{used} {self.unit}"
                raise LimitError(
                    f"your address has uploaded {amount} in the last {_when(self.window_s)}, the most this server "
                    f"accepts; try again in {_when(wait)}"
                )
            q.append((now, n))


def min_free_disk() -> int:
    """Bytes that must stay free on the disk of runs, uploads and caches (SEGDEMO_MIN_FREE_DISK_MB, default
    1024): below it new work is refused, so a full disk never breaks the checkpoints of runs already going."""
    return max(0, int(os.environ.get("SEGDEMO_MIN_FREE_DISK_MB") or 1024)) << 20


def ensure_free_disk(path) -> None:
    """Raise LimitError when the disk holding `path` (or its nearest existing parent) has less than
    min_free_disk() free."""
    from pathlib import Path

    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        free = shutil.disk_usage(p).free
    except OSError:
        return  # cannot tell: the writes themselves will say
    if free < min_free_disk():
        raise LimitError(
            f"the server's disk is nearly full ({free >> 20} MB free); nothing new can be stored until older runs "
            "expire. Try again later, or tell whoever runs this server"
        )


class Slots:
    """Open things (live streams) counted per key, with a per-key and a server-wide cap.

    `with slots.hold(key, ...):` takes a slot for the block or raises LimitError at once. `per_key` is one cap
    for every key, or one per position of the keys (a browser's, then its address's: a classroom shares an
    address, so that cap is larger), with `advice` saying what to do when the key at that position is full.
    """

    def __init__(self, per_key: int | tuple[int, ...], total: int, what: str, advice: tuple[str, ...] = ()):
        self.per_key = tuple(per_key) if isinstance(per_key, tuple) else (int(per_key),)
        self.total, self.what, self.advice = int(total), what, advice
        self._open: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def count(self, key: str | None = None) -> int:
        with self._lock:
            return sum(self._open.values()) if key is None else self._open.get(key, 0)

    def acquire(self, keys: tuple[str, ...]) -> None:
        with self._lock:
            if sum(self._open.values()) >= self.total:
                raise LimitError(f"the server has too many {self.what} open right now; try again in a minute")
            for i, k in enumerate(keys):
                cap = self.per_key[min(i, len(self.per_key) - 1)]
                if self._open.get(k, 0) >= cap:
                    advice = (
                        self.advice[i]
                        if i < len(self.advice)
                        else "close other tabs of this page (or wait a minute) and reload"
                    )
                    raise LimitError(f"{self._open[k]} {self.what} are open already, the most allowed; {advice}")
            for k in keys:
                self._open[k] += 1

    def release(self, keys: tuple[str, ...]) -> None:
        with self._lock:
            for k in keys:
                self._open[k] -= 1
                if self._open[k] <= 0:
                    del self._open[k]

    def hold(self, *keys: str) -> _Held:
        self.acquire(keys)
        return _Held(self, keys)


class _Held:
    def __init__(self, slots: Slots, keys: tuple[str, ...]):
        self.slots, self.keys, self._done = slots, keys, False

    def __enter__(self) -> _Held:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if not self._done:
            self._done = True
            self.slots.release(self.keys)
