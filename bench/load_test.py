"""Many users at once against the real server, through gradio_client.

Each of N concurrent sessions uploads a small zip dataset, trains the Quick preset for a few epochs
(queued behind the server's cap), then predicts 5 images. Prints queue waits, prediction latency,
the most runs seen training at once, and the server's peak RSS; the last line is

    sessions=N completed=N errors=0 p50_ms=... p95_ms=... peak_rss_mb=...

Usage: python bench/load_test.py --sessions 8 [--url http://host:port/] [--epochs 2] [--hostile]
Without --url it starts `python app.py` on a free port (SEGDEMO_MAX_CONCURRENT from the env, default 1).

--cluster ADDRESS (or `local`: two 1-CPU workers started here): the same sessions twice, in-process and then with
every run on the Ray cluster (segdemo/server/cluster.py); the last line compares their waits and what the
cluster adds per run.

--hostile: the last of the N sessions is a hostile client instead, for the whole run: it floods Train from
many sessions, holds as many live streams as it may, and sends the memory payloads (a checkpoint that claims
a huge model, 250 classes on a flat 2048x2048 image, every Train slider at its end), and issue 19's round
two: queued functions called around the queue, a flood of queued events, a weights decompression bomb, an
upload of 400 tiny files, plans for many image sizes, repeated GIFs and redraws at every float. Each session sends its
own X-Forwarded-For (the server trusts one proxy hop, as on a Space), so the honest sessions are N-1
addresses and the hostile one is one more; the last line then counts only the honest sessions.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import signal
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
from common import REPO, RssSampler, client, median, p95, start_app  # puts the repository on sys.path
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


def one_session(
    url: str, zip_path: Path, images: list[Path], epochs: int, out: dict, address: str, budget_min: float = 0
) -> None:
    """One student: a session, a zip, Train, a tab that polls /run_info (surviving a server restart: it waits
    and asks again with the same token), then 5 predictions. Records the first wait it was shown."""
    from gradio_client import handle_file

    c = client(url, headers={"X-Forwarded-For": address})
    token = c.predict(None, api_name="/session")
    t_submit = time.time()
    run_id, _ = c.predict(
        token,
        **train_args(zip_file=handle_file(str(zip_path)), epochs=epochs, time_budget=budget_min),
        api_name="/train",
    )
    positions, shown = [], None
    while True:  # poll like a browser tab that watches its queue position
        try:
            info = c.predict(token, run_id, api_name="/run_info")
        except Exception as e:  # the server is restarting: a reloaded tab asks again with its stored token
            out["reconnects"] = out.get("reconnects", 0) + 1
            if out["reconnects"] > 180:
                raise RuntimeError(f"the server did not come back: {e}") from e
            time.sleep(1.0)
            try:
                c = client(url, headers={"X-Forwarded-For": address})
            except Exception:
                pass  # not up yet: the next round tries again
            continue
        if info["status"] == "queued":
            positions.append(info["queue_position"])
            if shown is None and info.get("expected_wait_s"):
                shown = (time.time(), float(info["expected_wait_s"]))
        if info["finished"]:
            break
        time.sleep(1.0)
    out["queue_positions"] = positions
    out["status"], out["message"] = info["status"], info["message"]
    out["wait_s"] = (info.get("started") or t_submit) - (info.get("created") or t_submit)  # server clock
    out["interval"] = (info.get("started"), info.get("finished_at"))
    out["submitted"] = info.get("created") or t_submit
    out["run_id"] = run_id
    if shown is not None and info.get("started") and not out.get("reconnects"):
        seen_at, predicted = shown
        out["wait_shown"] = (predicted, max(0.0, info["started"] - seen_at))  # (shown, then waited)
    lat = []
    for img in images:
        for attempt in range(60):  # a prediction cut off by a restart is pressed again, as a student would
            t = time.perf_counter()
            try:
                c.predict(
                    token, f"run:{run_id}", None, [handle_file(str(img))], None, None, 0.5, False, api_name="/predict"
                )
                break
            except Exception:
                if attempt == 59:
                    raise
                out["reconnects"] = out.get("reconnects", 0) + 1
                time.sleep(1.0)
                try:
                    c = client(url, headers={"X-Forwarded-For": address})
                except Exception:
                    pass
        lat.append(1000 * (time.perf_counter() - t))
    out["latency_ms"] = lat


def train_args(**over) -> dict:
    """/train's arguments by name: the minute preset's Quick-sized run on the student's zip."""
    from tests.conftest import tiny_train_args

    return tiny_train_args(**{"dataset": "zip", "image_size": 64, "width": 8, "depth": 4, "train_images": 768, **over})


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
        round_two(url, c, token, address, tmp, out)
        time.sleep(2)


def round_two(url: str, c, token: str, address: str, tmp: Path, out: dict) -> None:
    """Issue 19's attackers, once per round: a queued function called around the queue, a flood of queued
    events from one address, a weights decompression bomb, an upload of many tiny files, plans for many
    image sizes, repeated GIFs of its own run, and redraws at every float. Refusals are counted as such."""
    import json
    import secrets
    import urllib.error
    import urllib.request

    from gradio_client import handle_file

    def post(path: str, body: bytes, ctype: str = "application/json") -> int:
        req = urllib.request.Request(
            url + path, data=body, method="POST", headers={"Content-Type": ctype, "X-Forwarded-For": address}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0

    def count(ok: bool) -> None:
        out["answered" if ok else "refused"] += 1

    count(post("gradio_api/run/check_data", json.dumps({"data": ["builtin", None, 768]}).encode()) == 200)
    if "check_data_index" not in out:
        with urllib.request.urlopen(url + "config", timeout=30) as r:
            deps = json.loads(r.read())["dependencies"]
        out["check_data_index"] = next(d["id"] for d in deps if d.get("api_name") == "check_data")
    for _ in range(60):  # a flood of waiting events, each from a "new tab"
        body = {
            "data": ["builtin", None, 768],
            "fn_index": out["check_data_index"],
            "session_hash": secrets.token_hex(6),
        }
        count(post("gradio_api/queue/join", json.dumps(body).encode()) == 200)
    if not (tmp / "bomb.pth").exists():
        with (
            zipfile.ZipFile(tmp / "bomb.pth", "w", zipfile.ZIP_DEFLATED) as z,
            z.open("a/data/0", "w", force_zip64=True) as f,
        ):
            for _ in range(80):
                f.write(bytes(8 << 20))
    try:
        from tests.conftest import tiny_train_args

        c.predict(token, **tiny_train_args(encoder_weights=handle_file(str(tmp / "bomb.pth"))), api_name="/train")
        count(True)
    except Exception:
        count(False)
    boundary = "b0undary"
    files = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="t{i}.png"\r\n\r\n'.encode() + b"x\r\n"
        for i in range(400)
    )
    count(
        post("gradio_api/upload", files + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}")
        == 200
    )
    for side in (40 + 13 * secrets.randbelow(20), 77 + secrets.randbelow(50)):
        z = tmp / f"plan-{side}.zip"
        with zipfile.ZipFile(z, "w") as zf:
            for i in range(2):
                buf = io.BytesIO()
                Image.fromarray(np.zeros((side, side + 8, 3), np.uint8)).save(buf, "PNG")
                zf.writestr(f"images/p{i}.png", buf.getvalue())
                buf = io.BytesIO()
                Image.fromarray(np.eye(side, side + 8, dtype=np.uint8)).save(buf, "PNG")
                zf.writestr(f"masks/p{i}.png", buf.getvalue())
        try:
            c.predict("minute", "zip", handle_file(str(z)), 768, api_name="/plan")
            count(True)
        except Exception:
            count(False)
    for _ in range(3):
        try:
            c.predict(token, "", api_name="/filmstrip_gif")
            count(True)
        except Exception:
            count(False)
    try:
        res = c.predict(
            token, "default", None, [handle_file(str(tmp / "flat.png"))], None, None, 0.5, False, api_name="/predict"
        )
        for i in range(40):
            c.predict(token, res[-1], i / 40 + 0.0123, None, api_name="/redraw")
        count(True)
    except Exception:
        count(False)


def training_by_address(runs_dir: Path) -> dict[str, tuple[int, float]]:
    """Per address key (sha256, as the run store keeps it): how many runs and their seconds on a training slot,
    all their turns together (job.json's slot_s; a run still going when the server stopped is counted so far)."""
    out: dict[str, tuple[int, float]] = {}
    for rec in runs_dir.glob("*/job.json"):
        try:
            doc = json.loads(rec.read_text())
            secs = float(doc.get("slot_s") or 0.0)
        except (OSError, ValueError, TypeError):
            continue
        key = doc.get("client_key") or "?"
        n, total = out.get(key, (0, 0.0))
        out[key] = (n + 1, total + secs)
    return out


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
    ap.add_argument("--one-address", action="store_true", help="every honest session behind one router")
    ap.add_argument(
        "--budget-min",
        type=float,
        default=0,
        help="each run's time budget in minutes (0: none); with many --epochs, runs use their budget as a lesson's do",
    )
    ap.add_argument(
        "--restart", type=float, metavar="S", help="kill -9 the server S seconds in and start it on the same folder"
    )
    ap.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="also run the same sessions with every run on this Ray cluster (ray://HEAD:PORT), or 'local' to start "
        "a local one of two 1-CPU workers here; prints both figures, measured in this run",
    )
    args = ap.parse_args()
    if not args.cluster:
        phase(args, {})
        return
    with local_cluster() if args.cluster == "local" else contextlib.nullcontext(args.cluster) as address:
        here = phase(args, {}, label="in-process")
        there = phase(args, {"SEGDEMO_RAY_ADDRESS": address}, label="cluster")
    print(
        f"in-process: waits median {here['wait_median']:.1f} s, longest {here['wait_max']:.1f} s, a run trained "
        f"{here['trained_median']:.1f} s (median) | cluster: waits median {there['wait_median']:.1f} s, longest "
        f"{there['wait_max']:.1f} s, a run {there['trained_median']:.1f} s; the cluster adds "
        f"{there['trained_median'] - here['trained_median']:+.1f} s a run (worker start, imports, scheduling, "
        f"events polled back; the run folder is shared, so no data moves) | errors {here['errors']} / {there['errors']}"
    )


@contextlib.contextmanager
def local_cluster(workers: int = 2):
    """A local Ray cluster: a head that trains nothing and `workers` nodes of 1 CPU (stopped with `ray stop`)."""
    import socket
    import subprocess
    import sys

    ray = str(Path(sys.executable).parent / "ray")
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    gcs, client_port = ports
    quiet = {"capture_output": True, "check": True, "timeout": 180}
    try:
        head = [f"--port={gcs}", f"--ray-client-server-port={client_port}", "--include-dashboard=false"]
        subprocess.run([ray, "start", "--head", "--num-cpus=0", *head, "--disable-usage-stats"], **quiet)
        for _ in range(workers):
            subprocess.run(
                [ray, "start", f"--address=127.0.0.1:{gcs}", "--num-cpus=1", "--disable-usage-stats"], **quiet
            )
        print(f"local Ray cluster: a head and {workers} workers of 1 CPU", flush=True)
        yield f"ray://127.0.0.1:{client_port}"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=180)


def phase(args, cluster_env: dict[str, str], label: str = "") -> dict:
    """The sessions against one server (started here unless --url); prints its lines, returns its headline."""
    tag = f"[{label}] " if label else ""
    proc, url = None, args.url
    runs_dir = None
    if args.restart:  # a folder that survives (not under /tmp): the run store keeps runs across the restart
        runs_dir = REPO / "runs" / f"bench-restart-{int(time.time())}"
        runs_dir.mkdir(parents=True)
    env = {"SEGDEMO_TRUSTED_PROXY_HOPS": "1", **cluster_env}
    if url is None:
        url, proc = start_app(env, runs_dir=runs_dir, log=runs_dir / "app.log" if runs_dir else None)
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
                address = "198.51.100.1" if args.one_address else f"198.51.100.{i + 1}"
                one_session(url, zip_path, images, args.epochs, results[i], address, args.budget_min)
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
        if args.restart and proc:
            time.sleep(args.restart)
            proc.send_signal(signal.SIGKILL)  # no atexit, no flush: as a crash or a pulled plug
            proc.wait()
            port = int(url.rstrip("/").rsplit(":", 1)[1])
            url2, proc = start_app(env, runs_dir=runs_dir, port=port, log=runs_dir / "app.log")
            assert url2 == url
            if sampler:
                sampler.pid = proc.pid
            print(f"server killed at {args.restart:.0f}s and started again on the same run folder", flush=True)
        for t in threads:
            t.join()
        stop.set()
        if attacker:
            attacker.join(60)
        wall = time.time() - t0
    if sampler:
        sampler.running = False
    shares = training_by_address(Path(proc.runs_dir)) if proc else {}
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
    shown = [r["wait_shown"] for r in done if r.get("wait_shown") and r["wait_shown"][1] >= 5]
    if shown:
        errs = sorted(abs(p - w) / w for p, w in shown)
        within = sum(e <= 0.3 for e in errs)
        print(
            f"wait shown vs waited (first estimate seen, waits of 5 s or more): {within}/{len(errs)} within 30%, "
            f"median error {100 * median(errs):.0f}%, worst {100 * errs[-1]:.0f}%"
        )
    if runs_dir is not None:
        gaps = []
        for r in done:
            lines = (runs_dir / r["run_id"] / "metrics.jsonl").read_text().splitlines()
            epochs = [json.loads(line)["epoch"] for line in lines]
            if epochs != list(range(1, len(epochs) + 1)):
                gaps.append((r["run_id"][:6], epochs))
        resumed = sum(1 for r in done if r.get("reconnects"))
        print(
            f"restart: {len(done)} runs finished after it ({resumed} sessions reconnected); metrics.jsonl with a "
            f"gap or duplicate: {len(gaps)} {gaps[:3]}"
        )
    if shares:
        from segdemo.server.jobs import address_key

        def who(key: str) -> str:
            if key == address_key("192.0.2.66"):
                return "hostile"
            return "class" if args.one_address else "students"

        by = {}
        for key, (n, secs) in shares.items():
            n0, s0 = by.get(who(key), (0, 0.0))
            by[who(key)] = (n0 + n, s0 + secs)
        print(
            "time on the training slot by address (turns ended so far): "
            + ", ".join(f"{k} {v[1]:.0f} s over {v[0]} runs" for k, v in sorted(by.items()))
        )
    if args.hostile:
        print(
            f"hostile client: {hostile.get('refused', 0)} requests refused, {hostile.get('answered', 0)} answered, "
            f"{hostile.get('streams', 0)} streams opened"
        )
    print(
        f"{tag}sessions={honest_n} completed={len(done)} errors={honest_n - len(done)} "
        f"p50_ms={p50:.0f} p95_ms={p95_ms:.0f} peak_rss_mb={rss}",
        flush=True,
    )
    trained = sorted(r["interval"][1] - r["interval"][0] for r in done if all(r["interval"]))
    return {
        "wait_median": median(waits) if waits else float("nan"),
        "wait_max": waits[-1] if waits else float("nan"),
        "trained_median": median(trained) if trained else float("nan"),
        "errors": honest_n - len(done),
    }


if __name__ == "__main__":
    main()
