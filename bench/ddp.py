"""1 vs 2 torchrun processes (gloo, CPU) on the built-in data: training images/s, the scaling ratio, and
the final metrics of both.

Both train the same number of steps on the same global batch (1 process x B, or 2 processes x B/2), the
same learning rate and epochs, so their final mIoU should agree within run-to-run noise. Each process
trains with one thread (OMP_NUM_THREADS=1), so this measures what a second process on a second core buys;
a one-process run with two threads is timed beside them for the honest comparison on a 2-core machine.
Rounds alternate the set-ups; figures are medians over rounds of each run's median epoch after the first.

Usage: python bench/ddp.py [--epochs 4] [--rounds 2] [--image-size 64] [--batch-size 8]
Last line: ddp_1proc_img_s=... ddp_2proc_img_s=... scaling=...x miou_1proc=... miou_2proc=...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def train(out: Path, nproc: int, threads: int, args) -> dict:
    batch = args.batch_size // nproc  # the same global batch, so the same steps and schedule
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "PYTHONPATH": str(ROOT),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "NO_ALBUMENTATIONS_UPDATE": "1",
    }
    cmd = [
        str(TORCHRUN),
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "segdemo",
        "train",
        "--data",
        "builtin",
        "--image-size",
        str(args.image_size),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(batch),
        "--precision",
        "fp32",
        "--channels-last",
        "off",
        "--out",
        str(out),
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [rec["images_per_s"] for rec in records[1:]] or [records[0]["images_per_s"]]
    return {"img_s": statistics.median(speeds), "miou": records[-1]["miou"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8, help="global batch (split over the processes)")
    args = ap.parse_args()
    setups = {"1proc": (1, 1), "1proc_2threads": (1, 2), "2proc": (2, 1)}
    results: dict[str, list[dict]] = {k: [] for k in setups}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, (nproc, threads) in setups.items():
                res = train(Path(tmp) / f"{name}-{r}", nproc, threads, args)
                results[name].append(res)
                print(f"round {r + 1} {name}: {res['img_s']:.1f} img/s, final mIoU {res['miou']:.4f}", flush=True)
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("img_s", "miou")} for k, v in results.items()}
    print(
        f"1 process, 2 threads: {med['1proc_2threads']['img_s']:.1f} img/s "
        f"({med['2proc']['img_s'] / med['1proc_2threads']['img_s']:.2f}x of it for 2 processes)"
    )
    print(
        f"ddp_1proc_img_s={med['1proc']['img_s']:.1f} ddp_2proc_img_s={med['2proc']['img_s']:.1f} "
        f"scaling={med['2proc']['img_s'] / med['1proc']['img_s']:.2f}x "
        f"miou_1proc={med['1proc']['miou']:.4f} miou_2proc={med['2proc']['miou']:.4f}"
    )


if __name__ == "__main__":
    main()
