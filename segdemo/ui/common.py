"""What both tabs share: the app context (job manager, caches, default checkpoint), the browser's owner
token, turning engine errors into gr.Error sentences, and small picture helpers.

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
import functools
import inspect
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import gradio as gr
import numpy as np

from segdemo.assets import EXAMPLES, SHIPPED_CHECKPOINT, asset
from segdemo.atomic import replace_file
from segdemo.core import budget
from segdemo.errors import is_user_error
from segdemo.escape import esc, md  # noqa: F401  (the UI's one way to put user text into HTML/Markdown)
from segdemo.server.jobs import JobManager
from segdemo.server.limits import LimitError, RateLimiter, Slots, client_address, ensure_free_disk

log = logging.getLogger("segdemo.ui")

DEFAULT_CHECKPOINT = asset(SHIPPED_CHECKPOINT)  # package data when installed, else the source tree
EXAMPLES_DIR = asset(EXAMPLES)
HEAVY = "heavy"  # concurrency id shared by every listener that loads a model or decodes data, public or private
CHECK_CACHE_BYTES = 64 << 20  # sample pictures of recent data checks, all together
SERVED_BYTES = int(os.environ.get("SEGDEMO_SERVED_MB") or 2048) << 20  # downloads kept for serving, all together
# live views (Train's watch and the page-load reattach) one browser may hold, one address (a classroom behind one
# router is one address: 30 students with a tab or two each) and the whole server
STREAMS_PER_BROWSER = 4
STREAMS_PER_ADDRESS = int(os.environ.get("SEGDEMO_STREAMS_PER_ADDRESS") or 96)
STREAMS_TOTAL = int(os.environ.get("SEGDEMO_STREAMS_TOTAL") or 256)
PROBES_PER_10_MIN = 8  # plans that need a fresh timed probe, per address (cached ones are free)
# owner tokens one address may be issued (a classroom shares one address; a page keeps its token across reloads)
NEW_SESSIONS_PER_10_MIN = int(os.environ.get("SEGDEMO_SESSIONS_PER_ADDRESS") or 300)


def bump(counter, **kw) -> dict:
    """Listener arguments that add one to a gr.State `counter`, so that the one always_last listener on its
    change draws a view instead of the bumping listener drawing it beside that one. Queued: gradio 6.31 fires a
    State's change only for queued events (a queue=False bump went unheard)."""
    return dict(
        fn=lambda n: n + 1,
        inputs=counter,
        outputs=counter,
        api_visibility="private",
        concurrency_limit=None,
        **kw,
    )


def client_of(request) -> str:
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
    ):
        self.jobs = jobs or JobManager.from_env()
        base = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "segdemo-app"
        base.mkdir(parents=True, exist_ok=True)
        sweep_dead_caches(base)
        self.cache_dir = base / f"{os.getpid()}-{secrets.token_hex(4)}"  # our own per-process folder
        self.cache_dir.mkdir(mode=0o700)
        atexit.register(shutil.rmtree, self.cache_dir, True)
        self.predict_budget = budget.predict_budget()
        self._downloads: dict[str, list[Path]] = {}  # run id -> files handed out for download
        self._served: OrderedDict[tuple, Path] = OrderedDict()  # what a thing was served as (see served())
        self.jobs.on_forget.append(self.forget_downloads)
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
        self._predictors: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()
        self.check_cache: OrderedDict[tuple, tuple[object, int]] = OrderedDict()  # key -> (value, bytes)

    # -- owner tokens ------------------------------------------------------------------------------

    def owner(self, token) -> str:
        """The owner for this request; gr.Error if the browser's token is missing or not ours."""
        if not self.jobs.valid_owner_token(token):
            raise gr.Error(
                "This browser session is not recognised (the server may have restarted). "
                "Reload the page to get a new session.",
                title="Session",
            )
        return token

    def ensure_token(self, token, request: gr.Request = None):
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

    def forget_browser(self, token, request: gr.Request = None):
        """A fresh owner token for this browser (a shared PC's next user); the old one's runs and labelled
        photos stay on the server until they expire, unreachable from here."""
        try:
            self.new_sessions.hit(client_of(request))
        except LimitError as e:
            raise user_error(str(e), title="Session") from None
        return self.jobs.issue_owner_token()

    # -- predictors --------------------------------------------------------------------------------

    def predictor(self, path: str | Path):
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

    def served(self, key: tuple, name: str, make: Callable[[Path], object], job=None) -> str:
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
        work = self.scratch("served")
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

    def download_copy(self, job, src: Path, name: str) -> str:
        """A run's file (its checkpoint) for a gr.File output, served to whoever has the link until the run
        expires; the same file asked for again is the same copy."""
        st = src.stat()
        key = ("copy", job.id, str(src), name, st.st_size, st.st_mtime_ns)
        return self.served(key, name, lambda dst: shutil.copyfile(src, dst), job)

    def forget_downloads(self, job) -> None:
        with self._lock:
            paths = set(self._downloads.pop(job.id, []))
            for k in [k for k, p in self._served.items() if p in paths]:
                del self._served[k]
        for p in paths:
            _remove_with_folder(p)

    def cache_get(self, key):
        with self._lock:
            hit = self.check_cache.get(key)
            return None if hit is None else hit[0]

    def cache_put(self, key, value, nbytes: int) -> None:
        """Keep a data check's result; the oldest go once all together pass CHECK_CACHE_BYTES."""
        with self._lock:
            self.check_cache[key] = (value, nbytes)
            while len(self.check_cache) > 1 and sum(n for _, n in self.check_cache.values()) > CHECK_CACHE_BYTES:
                self.check_cache.popitem(last=False)


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


# -- errors -----------------------------------------------------------------------------------------


def sentence(msg: str) -> str:
    """Engine messages are lower-case clauses; the page shows them as sentences."""
    msg = str(msg).strip()
    if not msg:
        return "Something went wrong."
    first = msg.split(" ", 1)[0]
    if first.isalpha():  # "the loss became nan" -> "The loss...", but never "Cat.png" for "cat.png"
        msg = msg[0].upper() + msg[1:]
    return msg if msg[-1] in ".!?" else msg + "."


_ABSOLUTE_PATH = re.compile(r"(?<![\w.~])(?:/[^\s/'\"`,;:()]+)+/([^\s/'\"`,;:()]*)")


def public(msg: str) -> str:
    """An engine message as the page may show it: a sentence, with server folders cut to their last part
    (`/home/app/.cache/segdemo/oxford-pet` -> `oxford-pet`): a visitor has no business with the server's
    layout, and a student needs only the name."""
    return sentence(_ABSOLUTE_PATH.sub(r"\1", str(msg)))


def user_error(msg: str, title: str | None = None) -> gr.Error:
    """A gr.Error for the user: public(), then HTML-escaped (the toast renders HTML)."""
    return gr.Error(esc(public(msg), quote=False), **({"title": title} if title else {}))


def _to_gr_error(e: Exception) -> gr.Error:
    if isinstance(e, gr.Error):
        return e
    if is_user_error(e):  # the engine's vocabulary for mistakes a student can fix (segdemo.errors)
        return user_error(str(e))
    log.exception("unexpected error in a UI handler")
    return gr.Error(
        f"Something unexpected went wrong on the server ({type(e).__name__}). Try again; if it "
        "keeps happening, reload the page."
    )


def user_errors(fn):
    """Every exception leaves a handler as a gr.Error sentence: engine refusals keep their words,
    bugs are logged on the server and shown only by type. Works for sync/async functions and generators."""
    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def agen(*a, **k):
            try:
                async for item in fn(*a, **k):
                    yield item
            except Exception as e:
                raise _to_gr_error(e) from None

        return agen
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen(*a, **k):
            try:
                yield from fn(*a, **k)
            except Exception as e:
                raise _to_gr_error(e) from None

        return gen
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def coro(*a, **k):
            try:
                return await fn(*a, **k)
            except Exception as e:
                raise _to_gr_error(e) from None

        return coro

    @functools.wraps(fn)
    def plain(*a, **k):
        try:
            return fn(*a, **k)
        except Exception as e:
            raise _to_gr_error(e) from None

    return plain


# -- pictures and words -----------------------------------------------------------------------------


def upscale(a: np.ndarray, min_side: int = 128) -> np.ndarray:
    """Nearest-neighbour enlarge small pictures so the browser shows crisp pixels, not blur."""
    h, w = a.shape[:2]
    f = int(np.ceil(min_side / max(1, min(h, w))))
    if f <= 1:
        return a
    return np.repeat(np.repeat(a, f, axis=0), f, axis=1)


def strip(*panels: np.ndarray, gap: int = 4) -> np.ndarray:
    """Side-by-side panels of the same height with white gaps."""
    h = max(p.shape[0] for p in panels)
    out = []
    for i, p in enumerate(panels):
        if p.ndim == 2:
            p = np.repeat(p[..., None], 3, axis=2)
        if p.shape[0] != h:
            p = np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)), constant_values=255)
        out.append(p)
        if i < len(panels) - 1:
            out.append(np.full((h, gap, 3), 255, np.uint8))
    return np.concatenate(out, axis=1)


def fmt_duration(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def fmt_num(v, digits: int = 4) -> str:
    """A metric for a table; undefined (None/NaN) shows as n/a."""
    if v is None:
        return "n/a"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "n/a" if np.isnan(f) else f"{f:.{digits}f}"


def safe_stem(name: str) -> str:
    stem = Path(name).stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:80] or "image"


# -- models a browser may predict with ----------------------------------------------------------------


def run_label(job) -> str:
    when = time.strftime("%H:%M", time.localtime(job.created))
    r = job.result
    best = f"val mIoU {r.best_miou:.3f}" if getattr(r, "best_miou", None) is not None else "no checkpoint"
    return f"Your run from {when} ({job.status}, {best})"


def export_onnx_zip(ctx: AppContext, checkpoint: Path, name: str | None = None) -> Path:
    """A checkpoint as a take-home bundle (ONNX model, meta.json, predict_onnx.py, README.md, requirements.txt) in
    one zip named after the run (`segdemo-<name>-onnx.zip`), in a scratch folder Gradio may serve."""
    from segdemo.export.exporter import ExportError, export_zip

    st = checkpoint.stat()
    stem = safe_stem(name or checkpoint.stem) or "model"
    zip_name = f"segdemo-{stem}-onnx.zip"
    try:  # exported once per checkpoint file (and version): a second click serves the same zip
        return Path(
            ctx.served(
                ("onnx", str(checkpoint.resolve()), st.st_size, st.st_mtime_ns),
                zip_name,
                lambda dst: export_zip(checkpoint, dst, "onnx"),
            )
        )
    except ExportError as e:  # the onnx package missing, or an export that disagrees with PyTorch
        raise user_error(str(e)) from None


def model_choices(ctx: AppContext, owner: str | None) -> list[tuple[str, str]]:
    """The shipped model, this browser's finished runs (newest first) and an uploaded file."""
    shipped = (
        "Shipped model: U-Net on the built-in shapes"
        if ctx.default_checkpoint.is_file()
        else "Shipped model (not installed on this server)"
    )
    choices = [(shipped, "default")]
    if owner and ctx.jobs.valid_owner_token(owner):
        for job in reversed(ctx.jobs.jobs_for(owner)):
            if job.best_checkpoint is not None:
                choices.append((run_label(job), f"run:{job.id}"))
    choices.append(("A checkpoint file I upload (.safetensors)", "upload"))
    return choices


def tidy_paths(text: str, *places: tuple[Path | str, str]) -> str:
    """Server folders mean nothing to a student (and are nobody's business): `folder/x` becomes `x`, and
    `folder` alone becomes its label, e.g. the temp folder a zip was unpacked into -> "mydata.zip"."""
    for folder, label in places:
        f = str(folder).rstrip("/")
        text = text.replace(f + "/", "").replace(f, label)
    return text


PICTURE_PATCH_GRADIO = "6.31.0"  # the gradio whose save_pil_to_cache the patch below replaces


def picture_patch_mismatch() -> str | None:
    """Why the picture-cache patch may not fit this gradio (another version, or the function it replaces
    changed shape), or None when it was written for exactly this one."""
    import inspect

    from gradio import processing_utils as pu

    if gr.__version__ != PICTURE_PATCH_GRADIO:
        return (
            f"segdemo's picture-cache patch (ui/common.py) was written for gradio {PICTURE_PATCH_GRADIO}, "
            f"and this is gradio {gr.__version__}: check that processing_utils.save_pil_to_cache still "
            "hashes, names and writes pictures the same way, then update PICTURE_PATCH_GRADIO"
        )
    params = list(inspect.signature(pu.save_pil_to_cache).parameters)
    if params[:4] != ["img", "cache_dir", "name", "format"]:
        return f"gradio's save_pil_to_cache takes {params}, not what segdemo's picture-cache patch replaces"
    return None


def write_pictures_to_cache_atomically() -> None:
    """Make Gradio write the pictures it sends as a temp file renamed into place, as it already does for files.

    Gradio 6.31 saves every output picture under a hash of its bytes with a plain `write_bytes`. When the
    same picture goes out again (the filmstrip's true masks every epoch, thirty students clicking the same
    example), a browser still fetching the first copy can read it mid-rewrite and get a truncated file
    ("Too little data for declared Content-Length": seen in test_app_api). Same paths, same bytes; a picture
    already in the cache is only touched, so `delete_cache` does not age it out.
    """
    from gradio import processing_utils as pu

    if getattr(pu.save_pil_to_cache, "segdemo_atomic", False):
        return
    mismatch = picture_patch_mismatch()
    if mismatch:  # loud, every start: the patch replaces a gradio internal that may have moved on
        log.warning("%s", mismatch)
        warnings.warn(mismatch, RuntimeWarning, stacklevel=2)

    def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
        data = pu.encode_pil_to_bytes(img, format)
        path = (Path(cache_dir) / pu.hash_bytes(data) / f"{name}.{format}").resolve()
        try:
            if path.stat().st_size == len(data):  # named by its hash: these very bytes are there already
                os.utime(path)
                return str(path)
        except FileNotFoundError:
            pass
        return str(replace_file(path, data, fsync=False))

    save_pil_to_cache.segdemo_atomic = True  # type: ignore[attr-defined]
    pu.save_pil_to_cache = save_pil_to_cache
