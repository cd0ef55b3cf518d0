"""The app context every tab holds (job manager, predictors, scratch folders, caches, served files, limits) and
the browser's owner token.

Owner / session isolation
-------------------------
Each browser gets an owner token the SERVER issues (segdemo/server/tokens.py: 192 random bits plus an HMAC
with a server secret). It lives in a gr.BrowserState (the browser's localStorage), so it
survives reloads and is shared by the tabs of one browser, and every event sends it back. Runs are
registered under a hash of that token; every lookup needs the token AND the run id, and a wrong pair
gets the same "no such run" as a made-up id. Tokens the server did not sign are refused, so a client
cannot pick an easy one that another might pick too. request.session_hash is NOT used for ownership:
it changes on every reload, so a student would lose their run by pressing F5.
API clients get a token from the `/session` endpoint and pass it to each call.
"""

from __future__ import annotations

import atexit
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from segdemo.assets import EXAMPLES, SHIPPED_CHECKPOINT, asset
from segdemo.core import budget
from segdemo.server.jobs import JobManager
from segdemo.server.limits import LimitError, RateLimiter, Slots, client_address, ensure_free_disk
from segdemo.ui.errors import user_error
from segdemo.ui.served import ServedFiles

if TYPE_CHECKING:  # loaded on first use: torch is slow to import
    from segdemo.core.predict import Predictor

DEFAULT_CHECKPOINT = asset(SHIPPED_CHECKPOINT)  # package data when installed, else the source tree
EXAMPLES_DIR = asset(EXAMPLES)
CHECK_CACHE_BYTES = 64 << 20  # sample pictures of recent data checks, all together
# live views (Train's watch and the page-load reattach) one browser may hold, one address (a classroom behind one
# router is one address: 30 students with a tab or two each) and the whole server
STREAMS_PER_BROWSER = 4
STREAMS_PER_ADDRESS = int(os.environ.get("SEGDEMO_STREAMS_PER_ADDRESS") or 96)
STREAMS_TOTAL = int(os.environ.get("SEGDEMO_STREAMS_TOTAL") or 256)
PROBES_PER_10_MIN = 8  # plans that need a fresh timed probe, per address (cached ones are free)
# owner tokens one address may be issued (a classroom shares one address; a page keeps its token across reloads)
NEW_SESSIONS_PER_10_MIN = int(os.environ.get("SEGDEMO_SESSIONS_PER_ADDRESS") or 300)


def client_of(request: gr.Request | None) -> str:
    """The address a gr.Request came from (see limits.client_address); "local" for a direct call."""
    if request is None:
        return "local"
    headers = {k.lower(): v for k, v in (getattr(request, "headers", None) or {}).items()}
    peer = getattr(getattr(request, "client", None), "host", None)
    return client_address(headers, peer)


class AppContext:
    """Server-wide things every handler needs; one per build_demo(). Holds no per-user state itself."""

    def __init__(
        self,
        jobs: JobManager | None = None,
        cache_dir: str | Path | None = None,
        default_checkpoint: str | Path | None = None,
    ) -> None:
        self.jobs = jobs or JobManager.from_env()
        base = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "segdemo-app"
        base.mkdir(parents=True, exist_ok=True)
        sweep_dead_caches(base)
        self.cache_dir = base / f"{os.getpid()}-{secrets.token_hex(4)}"  # our own per-process folder
        self.cache_dir.mkdir(mode=0o700)
        atexit.register(shutil.rmtree, self.cache_dir, True)
        self.predict_budget = budget.predict_budget()
        self.files = ServedFiles(self.scratch)
        self.served, self.download_copy = self.files.served, self.files.download_copy
        self.jobs.on_forget.append(self.files.forget_downloads)
        self.streams = Slots(
            (STREAMS_PER_BROWSER, STREAMS_PER_ADDRESS),
            STREAMS_TOTAL,
            "live views",
            (
                "close other tabs of this page in this browser and reload",
                "everyone behind your router shares this address; wait a minute and reload (the host can raise "
                "SEGDEMO_STREAMS_PER_ADDRESS)",
            ),
        )
        self.new_sessions = RateLimiter(NEW_SESSIONS_PER_10_MIN, 600, "new sessions")
        self.probes = RateLimiter(PROBES_PER_10_MIN, 600, "new speed measurements for plans")
        self.default_checkpoint = Path(default_checkpoint) if default_checkpoint else DEFAULT_CHECKPOINT
        # BrowserState "encrypts" with a key the page can read anyway; deriving it from the jobs secret
        # keeps a browser's token readable across restarts when the runs persist.
        self.browser_secret = self.jobs.tokens.derive(b"browser-state")
        self._predictors: OrderedDict[tuple, Predictor] = OrderedDict()
        self._lock = threading.Lock()
        self.check_cache: OrderedDict[tuple, tuple[object, int]] = OrderedDict()  # key -> (value, bytes)

    # -- owner tokens ------------------------------------------------------------------------------

    def owner(self, token: Any) -> str:
        """The owner for this request; gr.Error if the browser's token is missing or not ours."""
        if not self.jobs.valid_owner_token(token):
            raise gr.Error(
                "This browser session is not recognised (the server may have restarted). "
                "Reload the page to get a new session.",
                title="Session",
            )
        return token

    def ensure_token(self, token: Any, request: gr.Request | None = None) -> str:
        """Keep a valid token; issue a fresh one for a new browser (or one from an old server), at most
        NEW_SESSIONS_PER_10_MIN per address: a client minting sessions without end could otherwise claim a
        run slot with each."""
        if self.jobs.valid_owner_token(token):
            return token
        try:
            self.new_sessions.hit(client_of(request))
        except LimitError as e:
            raise user_error(str(e), title="Session") from None
        return self.jobs.issue_owner_token()

    def forget_browser(self, token: Any, request: gr.Request | None = None) -> str:
        """A fresh owner token for this browser (a shared PC's next user); the old one's runs and labelled
        photos stay on the server until they expire, unreachable from here."""
        try:
            self.new_sessions.hit(client_of(request))
        except LimitError as e:
            raise user_error(str(e), title="Session") from None
        return self.jobs.issue_owner_token()

    # -- predictors --------------------------------------------------------------------------------

    def predictor(self, path: str | Path) -> Predictor:
        """A Predictor for a checkpoint file, kept in a small LRU keyed by path, size and mtime."""
        from segdemo.core.predict import Predictor
        from segdemo.server import zerogpu

        p = Path(path)
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        with self._lock:
            if key in self._predictors:
                self._predictors.move_to_end(key)
                return self._predictors[key]
        pred = Predictor.from_path(p, max_predict_bytes=self.predict_budget, device=zerogpu.app_device())
        with self._lock:
            self._predictors[key] = pred
            while len(self._predictors) > 6:
                self._predictors.popitem(last=False)
        return pred

    # -- scratch folders ---------------------------------------------------------------------------

    def scratch(self, kind: str) -> Path:
        """A fresh per-request folder inside the app's cache (old ones are removed after an hour)."""
        root = self.cache_dir / kind
        root.mkdir(parents=True, exist_ok=True)
        ensure_free_disk(root)  # every download, export, check, prediction and photo is written in one of these
        now = time.time()
        for d in root.iterdir():
            try:
                if now - d.stat().st_mtime > 3600:
                    shutil.rmtree(d, ignore_errors=True)
            except OSError:
                pass
        d = root / secrets.token_hex(8)
        d.mkdir()
        return d

    def cache_get(self, key: tuple) -> Any:
        with self._lock:
            hit = self.check_cache.get(key)
            return None if hit is None else hit[0]

    def cache_put(self, key: tuple, value: Any, nbytes: int) -> None:
        """Keep a data check's result; the oldest go once all together pass CHECK_CACHE_BYTES."""
        with self._lock:
            self.check_cache[key] = (value, nbytes)
            while len(self.check_cache) > 1 and sum(n for _, n in self.check_cache.values()) > CHECK_CACHE_BYTES:
                self.check_cache.popitem(last=False)


_CACHE_FOLDER = re.compile(r"^(\d+)-[0-9a-f]{8}$")


def sweep_dead_caches(base: Path) -> None:
    """Remove the per-process cache folders (`<pid>-<8 hex>`) of servers that are no longer running: a
    killed server never ran its atexit. Anything else in `base` is left alone."""
    try:
        entries = list(base.iterdir())
    except OSError:
        return
    for d in entries:
        m = _CACHE_FOLDER.match(d.name)
        if not m or not d.is_dir() or d.is_symlink():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # that process is alive (maybe another server): its folder is its own
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue
        shutil.rmtree(d, ignore_errors=True)
