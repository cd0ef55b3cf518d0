"""Shared helpers for the benchmarks: repo path, load line, medians, timing, peak RSS of a fresh process."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import sys
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


def timed(fn, repeats: int, warmup: int = 2) -> list[float]:
    """Seconds per call of fn(), after warm-up calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def peak_rss_mb(code: str, timeout: float = 600) -> float:
    """Run `code` in a fresh Python process (repo importable); return its peak resident memory (VmHWM), MB."""
    tail = "\nprint('VMHWM', *[ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM')])"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code + tail], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=timeout)
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
