"""The app as one student feels it, against the real server (`python app.py` on a free port):

- memory at rest: the server's resident memory after start-up, and again after the predictions below;
- Predict: a 512x512 PNG upload through gradio_client to the shipped model, end to end (upload, queue,
  prediction, pictures encoded, the 4 result files downloaded), --repeats calls after 3 warm-ups;
- first epoch row: headless Chromium opens the page, presses Train with the Quick preset on the built-in
  data and waits for the per-class IoU table's first row. From the run folder's metrics log (polled every
  20 ms) it splits that time into start-up (data, speed probe), the epoch's own compute, and the delay
  until the row shows in the browser.

    python bench/app_speed.py [--repeats 30] [--no-browser]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import client, load, machine, median, p95, rss_mb, start_app
from PIL import Image

from segdemo.data.builtin import make_sample

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def predict_latency(url: str, image: Path, repeats: int) -> list[float]:
    from gradio_client import handle_file

    c = client(url, download_files=tempfile.mkdtemp(prefix="segdemo-bench-dl-"))
    token = c.predict(None, api_name="/session")
    out = []
    for i in range(repeats + 3):
        t0 = time.perf_counter()
        c.predict(token, "default", None, [handle_file(str(image))], None, None, 0.5, False, api_name="/predict")
        if i >= 3:
            out.append(1000 * (time.perf_counter() - t0))
    return out


def first_epoch_row(url: str, runs_dir: Path) -> dict[str, float]:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        expect(page.locator("#data-report")).to_contain_text("Ready to train", timeout=120_000)
        t_click = time.time()
        page.locator("#train-btn").click()
        log, t_logged = None, None
        while t_logged is None and time.time() - t_click < 600:  # the first line of the run's metrics log
            logs = [f for f in runs_dir.rglob("metrics.jsonl") if f.stat().st_size > 0]
            if logs:
                log, t_logged = logs[0], time.time()
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
    args = ap.parse_args()
    print(machine(), "|", load(), flush=True)

    url, proc = start_app()
    try:
        time.sleep(5)  # let start-up settle
        rest_mb = rss_mb(proc.pid)
        with tempfile.TemporaryDirectory() as tmp:
            image = Path(tmp) / "photo.png"
            Image.fromarray(make_sample(np.random.default_rng(5), 128)[0]).resize((512, 512)).save(image)
            lat = sorted(predict_latency(url, image, args.repeats))
        p50, p95_ms = median(lat), p95(lat)
        time.sleep(2)
        after_mb = rss_mb(proc.pid)
        print(f"at rest: {rest_mb:.0f} MB RSS after start-up, {after_mb:.0f} MB after {len(lat) + 3} predictions")
        print(
            f"predict 512x512 via gradio_client, {len(lat)} calls: p50 {p50:.0f} ms, p95 {p95_ms:.0f} ms, "
            f"min {lat[0]:.0f} ms | {load()}",
            flush=True,
        )
        line = f"predict_p50_ms={p50:.0f} predict_p95_ms={p95_ms:.0f} rest_rss_mb={rest_mb:.0f}"
        if not args.no_browser:
            r = first_epoch_row(url, proc.runs_dir)
            print(
                f"first epoch row in Chromium {r['click_to_row_s']:.1f} s after pressing Train: start-up "
                f"{r['startup_s']:.1f} s + epoch {r['epoch_s']:.1f} s + to the page {r['logged_to_row_s']:.2f} s "
                f"| {load()}"
            )
            line += f" first_row_beyond_epoch_s={r['beyond_epoch_s']:.1f}"
        peak = rss_mb(proc.pid, "VmHWM")
        print(f"server peak RSS {peak:.0f} MB")
        print(line)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
