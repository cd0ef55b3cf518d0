"""Shared helpers for the benchmarks: repo path, load line, medians, timing, peak RSS of a fresh process."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"  # ../shared/data relative to the repo
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def load() -> str:
    """The 1/5/15-minute load averages: other work on these cores makes timings noisy."""
    return "load " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def median(xs) -> float:
    return statistics.median(xs)


def p95(xs) -> float:
    """The 95th-percentile value (nearest rank) of a non-empty sample."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.95 * len(xs)))]


def peak_rss_mb(code: str, timeout: float = 600) -> float:
    """Run `code` in a fresh Python process (repo importable); return its peak resident memory (VmHWM), MB."""
    tail = "\nprint('VMHWM', *[ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM')])"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code + tail], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("VMHWM ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"child failed ({out.returncode}): {out.stderr[-2000:]}")
    return int(lines[-1].split()[1]) / 1024


@contextlib.contextmanager
def busy_processes(n: int):
    """n processes spinning on a core each while the block runs: 'something else is using the machine'."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def start_app(
    extra_env: dict[str, str] | None = None,
    timeout: float = 180,
    repo: Path = REPO,
    log: Path | None = None,
    runs_dir: Path | None = None,
    port: int | None = None,
) -> tuple[str, subprocess.Popen]:
    """`python app.py` of `repo` (this checkout, or another to compare with) on a free local port (or `port`),
    runs in a fresh temporary folder (or `runs_dir`), its output in `log` if given; returns (url, process)."""
    import socket
    import tempfile

    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    env = {
        **os.environ,
        "PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "SEGDEMO_RUNS_DIR": str(runs_dir) if runs_dir else tempfile.mkdtemp(prefix="segdemo-bench-runs-"),
        **(extra_env or {}),
    }
    out = open(log, "a") if log else subprocess.DEVNULL  # noqa: SIM115 - the child holds it; closed at exit
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT)
    proc.runs_dir = Path(env["SEGDEMO_RUNS_DIR"])  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return url, proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"the app did not start within {timeout:.0f} s")


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory now (VmRSS) or its peak so far (VmHWM), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


class RssSampler(threading.Thread):
    """Polls a process's peak resident memory (VmHWM, the kernel's own high-water mark) until stopped."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_mb, self.running = pid, 0.0, True

    def run(self) -> None:
        while self.running:
            try:
                self.peak_mb = max(self.peak_mb, rss_mb(self.pid, "VmHWM"))
            except (OSError, RuntimeError):
                return
            time.sleep(0.5)


def client(url: str, **kw):
    """A gradio_client Client. On a plain-http URL, TLS verification means nothing, and turning it off spares
    gradio_client building a certificate store (~50 ms) for every request and every file it downloads."""
    from gradio_client import Client

    return Client(url, verbose=False, ssl_verify=not url.startswith("http://"), **kw)
