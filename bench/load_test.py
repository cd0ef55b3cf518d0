"""Many users at once against the real server, through gradio_client.

Each of N concurrent sessions uploads a small zip dataset, trains the Quick preset for a few epochs
(queued behind the server's cap), then predicts 5 images. Prints queue waits, prediction latency,
the most runs seen training at once, and the server's peak RSS; the last line is

    sessions=N completed=N errors=0 p50_ms=... p95_ms=... peak_rss_mb=...

Usage: python bench/load_test.py --sessions 8 [--url http://host:port/] [--epochs 2] [--hostile]
Without --url it starts `python app.py` on a free port (SEGDEMO_MAX_CONCURRENT from the env, default 1).

--hostile: the last of the N sessions is a hostile client instead, for the whole run: it floods Train from
many sessions, holds as many live streams as it may, and sends the memory payloads (a checkpoint that claims
a huge model, 250 classes on a flat 2048x2048 image, every Train slider at its end). Each session sends its
own X-Forwarded-For (the server trusts one proxy hop, as on a Space), so the honest sessions are N-1
addresses and the hostile one is one more; the last line then counts only the honest sessions.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
from common import RssSampler, client, median, p95, start_app  # puts the repository on sys.path
from PIL import Image

from segdemo.data.builtin import make_sample


def make_zip(path: Path, n: int = 24, size: int = 64) -> None:
    """A small folder dataset (images/ + masks/) of built-in shapes, zipped as a student would."""
    rng = np.random.default_rng(123)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(n):
            image, mask = make_sample(rng, size)
            for folder, arr in (("images", image), ("masks", mask)):
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format="PNG")
                z.writestr(f"shapes/{folder}/{i:03d}.png", buf.getvalue())


def one_session(url: str, zip_path: Path, images: list[Path], epochs: int, out: dict, address: str) -> None:
    from gradio_client import handle_file

    c = client(url, headers={"X-Forwarded-For": address})
    token = c.predict(None, api_name="/session")
    t_submit = time.time()
    run_id, _ = c.predict(
        token,
        "zip",
        handle_file(str(zip_path)),
        "minute",
        64,
        epochs,
        8,
        0.003,
        "ce_dice",
        8,
        4,
        "transposed",
        True,
        768,
        api_name="/train",
    )
    positions = []
    while True:  # poll like a browser tab that watches its queue position
        info = c.predict(token, run_id, api_name="/run_info")
        if info["status"] == "queued":
            positions.append(info["queue_position"])
        if info["finished"]:
            break
        time.sleep(1.0)
    out["queue_positions"] = positions
    out["status"], out["message"] = info["status"], info["message"]
    out["wait_s"] = (info.get("started") or t_submit) - (info.get("created") or t_submit)  # server clock
    out["interval"] = (info.get("started"), info.get("finished_at"))
    out["submitted"] = info.get("created") or t_submit
    lat = []
    for img in images:
        t = time.perf_counter()
        c.predict(token, f"run:{run_id}", None, [handle_file(str(img))], None, None, 0.5, False, api_name="/predict")
        lat.append(1000 * (time.perf_counter() - t))
    out["latency_ms"] = lat


def hostile_client(url: str, tmp: Path, stop: threading.Event, out: dict) -> None:
    """Floods trains, holds streams and sends memory payloads until `stop`; counts what it was refused."""
    from gradio_client import handle_file

    from tests.payloads import flat_image, lying_checkpoint, many_class_checkpoint

    huge = lying_checkpoint(tmp / "huge.safetensors", 256, 6)
    many = many_class_checkpoint(tmp / "k250.safetensors")
    flat = flat_image(tmp / "flat.png")
    address = "192.0.2.66"
    out.update(refused=0, answered=0, streams=0)
    streams = []

    def attempt(fn):
        try:
            fn()
            out["answered"] += 1
        except Exception:
            out["refused"] += 1

    while not stop.is_set():
        c = client(url, headers={"X-Forwarded-For": address})
        try:
            token = c.predict(None, api_name="/session")
        except Exception:
            out["refused"] += 1
            time.sleep(1)
            continue
        attempt(
            lambda c=c, t=token: c.predict(
                t,
                "builtin",
                None,
                "minute",
                64,
                50,
                8,
                0.003,
                "ce_dice",
                8,
                4,
                "transposed",
                True,
                768,
                api_name="/train",
            )
        )
        attempt(
            lambda c=c, t=token: c.predict(
                t,
                "builtin",
                None,
                "minute",
                512,
                1,
                64,
                0.003,
                "ce_dice",
                64,
                5,
                "transposed",
                True,
                768,
                api_name="/train",
            )
        )
        for _ in range(4):
            streams.append(c.submit(token, "", api_name="/watch"))
        out["streams"] = len(streams)
        attempt(
            lambda c=c, t=token: c.predict(
                t,
                "upload",
                handle_file(str(huge)),
                [handle_file(str(flat))],
                None,
                None,
                0.5,
                False,
                api_name="/predict",
            )
        )
        attempt(
            lambda c=c, t=token: c.predict(
                t,
                "upload",
                handle_file(str(many)),
                [handle_file(str(flat))],
                None,
                None,
                0.5,
                True,
                api_name="/predict",
            )
        )
        time.sleep(2)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(s, 1) for s, e in intervals] + [(e, -1) for s, e in intervals])
    best = cur = 0
    for _, d in points:
        cur += d
        best = max(best, cur)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--url", help="an already running app; default: start one")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--hostile", action="store_true", help="the last session is a hostile client")
    args = ap.parse_args()

    proc, url = None, args.url
    if url is None:
        url, proc = start_app({"SEGDEMO_TRUSTED_PROXY_HOPS": "1"})
    honest_n = args.sessions - 1 if args.hostile else args.sessions
    sampler = RssSampler(proc.pid) if proc else None
    if sampler:
        sampler.start()
    results: list[dict] = [{} for _ in range(honest_n)]
    hostile: dict = {}
    stop = threading.Event()
    errors: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        zip_path = Path(tmp) / "shapes.zip"
        make_zip(zip_path)
        rng = np.random.default_rng(5)
        images = []
        for i in range(5):
            p = Path(tmp) / f"photo{i}.png"
            Image.fromarray(make_sample(rng, 128)[0]).resize((512, 512)).save(p)
            images.append(p)

        def worker(i: int) -> None:
            try:
                one_session(url, zip_path, images, args.epochs, results[i], f"198.51.100.{i + 1}")
            except Exception as e:  # counted and shown, never hidden
                errors.append(f"session {i}: {type(e).__name__}: {e}")

        t0 = time.time()
        attacker = None
        if args.hostile:
            attacker = threading.Thread(target=hostile_client, args=(url, Path(tmp), stop, hostile), daemon=True)
            attacker.start()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(honest_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        if attacker:
            attacker.join(60)
        wall = time.time() - t0
    if sampler:
        sampler.running = False
    if proc:
        proc.terminate()
        proc.wait(timeout=30)

    done = [r for r in results if r.get("status") == "done" and len(r.get("latency_ms", [])) == 5]
    lat = sorted(x for r in done for x in r["latency_ms"])
    waits = sorted(r["wait_s"] for r in done)
    intervals = [r["interval"] for r in done if all(r["interval"])]
    for e in errors:
        print("error:", e)
    for i, r in enumerate(results):
        if r.get("status") not in (None, "done"):
            print(f"session {i}: {r['status']}: {r.get('message')}")
        elif r.get("interval") and all(r["interval"]):
            print(
                f"session {i}: submitted at {r['submitted'] - t0:.0f}s, waited {r['wait_s']:.1f}s, "
                f"trained {r['interval'][1] - r['interval'][0]:.1f}s",
                flush=True,
            )
    print(
        f"wall {wall:.0f}s; queue wait s: min {waits[0] if waits else 0:.1f} median "
        f"{median(waits) if waits else 0:.1f} max {waits[-1] if waits else 0:.1f}; positions seen: "
        f"{sorted({p for r in done for p in r['queue_positions']})}"
    )
    print(f"most runs training at once: {max_overlap(intervals) if intervals else 'n/a'}")
    by_submit = sorted((r for r in done if r["interval"][0]), key=lambda r: r["submitted"])
    starts = [r["interval"][0] for r in by_submit]
    print(f"runs started in the order they were submitted: {'yes' if starts == sorted(starts) else 'NO'}")
    p50, p95_ms = (median(lat), p95(lat)) if lat else (float("nan"), float("nan"))
    rss = f"{sampler.peak_mb:.0f}" if sampler else "n/a"
    if args.hostile:
        print(
            f"hostile client: {hostile.get('refused', 0)} requests refused, {hostile.get('answered', 0)} answered, "
            f"{hostile.get('streams', 0)} streams opened"
        )
    print(
        f"sessions={honest_n} completed={len(done)} errors={honest_n - len(done)} "
        f"p50_ms={p50:.0f} p95_ms={p95_ms:.0f} peak_rss_mb={rss}"
    )


if __name__ == "__main__":
    main()
