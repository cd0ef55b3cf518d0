"""The app as one student feels it, against the real server (`python app.py` on a free port):

- memory at rest: the server's resident memory after start-up, and again after the predictions below;
- Predict: a 512x512 PNG upload through gradio_client to the shipped model, end to end (upload, queue,
  prediction, pictures encoded, the 4 result files downloaded), --repeats calls after 3 warm-ups;
- first epoch row: headless Chromium opens the page, presses Train with the Quick preset on the built-in
  data and waits for the per-class IoU table's first row. From the run folder's metrics log (polled every
  20 ms) it splits that time into start-up (data, speed probe), the epoch's own compute, and the delay
  until the row shows in the browser.

With --baseline DIR (another checkout, e.g. main) that checkout's server runs beside this one: the Predict calls
alternate between the two, then the first-epoch measurement alternates (--rounds times each), so both see the
same machine; a last line gives both sets of figures.

    python bench/app_speed.py [--repeats 30] [--no-browser] [--baseline ../main] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import REPO, client, load, machine, median, p95, rss_mb, start_app
from PIL import Image

from segdemo.data.builtin import make_sample

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def predict_latency(urls: list[str], image: Path, repeats: int) -> list[list[float]]:
    """Per server, `repeats` Predict calls after 3 warm-ups; the servers take turns call by call."""
    from gradio_client import handle_file

    clients = [client(url, download_files=tempfile.mkdtemp(prefix="segdemo-bench-dl-")) for url in urls]
    tokens = [c.predict(None, api_name="/session") for c in clients]
    out: list[list[float]] = [[] for _ in urls]
    for i in range(repeats + 3):
        for c, token, times in zip(clients, tokens, out, strict=True):
            t0 = time.perf_counter()
            c.predict(token, "default", None, [handle_file(str(image))], None, None, 0.5, False, api_name="/predict")
            if i >= 3:
                times.append(1000 * (time.perf_counter() - t0))
    return out


def first_epoch_row(url: str, runs_dir: Path, earlier: int = 0) -> dict[str, float]:
    """Press Train in a fresh page; `earlier` runs of this server already left their metrics logs."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        expect(page.locator("#data-report")).to_contain_text("Ready to train", timeout=120_000)
        if page.locator("#preset-why").count():  # a page with presets plans them for the data (a timed probe,
            # once per server) after the check: a student presses Train once the plan shows
            expect(page.locator("#preset-why")).to_contain_text("img/s", timeout=120_000)
        t_click = time.time()
        page.locator("#train-btn").click()
        log, t_logged = None, None
        while t_logged is None and time.time() - t_click < 600:  # the first line of the run's metrics log
            logs = [f for f in runs_dir.rglob("metrics.jsonl") if f.stat().st_size > 0]
            if len(logs) > earlier:
                log, t_logged = max(logs, key=lambda f: f.stat().st_mtime), time.time()
            time.sleep(0.02)
        if log is None:
            raise SystemExit("no epoch was logged within 600 s")
        expect(page.locator("#iou-table")).to_contain_text("mean (mIoU)", timeout=600_000)
        t_row = time.time()
        page.locator("#stop-btn").click()
        browser.close()
    epoch = json.loads(log.read_text().splitlines()[0])
    return {
        "click_to_row_s": t_row - t_click,
        "epoch_s": epoch["seconds"],
        "startup_s": t_logged - t_click - epoch["seconds"],
        "logged_to_row_s": t_row - t_logged,
        "beyond_epoch_s": t_row - t_click - epoch["seconds"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--no-browser", action="store_true", help="skip the headless Chromium measurement")
    ap.add_argument("--baseline", type=Path, help="another checkout to measure side by side (e.g. ../main)")
    ap.add_argument("--rounds", type=int, default=1, help="first-epoch measurements per server")
    args = ap.parse_args()
    print(machine(), "|", load(), flush=True)

    repos = {"this": REPO} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    servers = {name: start_app(repo=repo) for name, repo in repos.items()}
    try:
        time.sleep(5)  # let start-up settle
        rest_mb = {name: rss_mb(proc.pid) for name, (_, proc) in servers.items()}
        with tempfile.TemporaryDirectory() as tmp:
            image = Path(tmp) / "photo.png"
            Image.fromarray(make_sample(np.random.default_rng(5), 128)[0]).resize((512, 512)).save(image)
            lats = predict_latency([url for url, _ in servers.values()], image, args.repeats)
        time.sleep(2)
        rows = {name: [] for name in servers}
        if not args.no_browser:
            for _ in range(args.rounds):
                for name, (url, proc) in servers.items():  # take turns, so both see the same machine
                    rows[name].append(first_epoch_row(url, proc.runs_dir, len(rows[name])))
        line = []
        for (name, (_, proc)), lat in zip(servers.items(), lats, strict=True):
            lat = sorted(lat)
            p50, p95_ms = median(lat), p95(lat)
            print(f"{name}: at rest {rest_mb[name]:.0f} MB RSS after start-up, {rss_mb(proc.pid):.0f} MB now")
            print(
                f"{name}: predict 512x512 via gradio_client, {len(lat)} calls: p50 {p50:.0f} ms, p95 {p95_ms:.0f} ms, "
                f"min {lat[0]:.0f} ms | {load()}",
                flush=True,
            )
            part = f"{name}: predict_p50_ms={p50:.0f} predict_p95_ms={p95_ms:.0f} rest_rss_mb={rest_mb[name]:.0f}"
            for r in rows[name]:
                print(
                    f"{name}: first epoch row in Chromium {r['click_to_row_s']:.1f} s after pressing Train: start-up "
                    f"{r['startup_s']:.1f} s + epoch {r['epoch_s']:.1f} s + to the page {r['logged_to_row_s']:.2f} s"
                )
            if rows[name]:
                beyond = median([r["beyond_epoch_s"] for r in rows[name]])
                part += f" first_row_beyond_epoch_s={beyond:.1f}"
            print(f"{name}: server peak RSS {rss_mb(proc.pid, 'VmHWM'):.0f} MB")
            line.append(part)
        print(" | ".join(line))
    finally:
        for _, proc in servers.values():
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
