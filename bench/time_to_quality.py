"""Wall time from pressing train (data generation and the speedups probe included) to val mIoU >= target,
with the quick CPU preset on the built-in shapes. Options override the preset for tuning.

    python bench/time_to_quality.py [--seeds 0 1] [--target 0.90] [--lr 3e-3 --batch 8 ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import load, machine, median

from segdemo.config import quick_cpu_preset
from segdemo.data.builtin import open_builtin
from segdemo.events import Done, EpochEnd, Failed, Progress
from segdemo.trainer import Trainer


def run_once(args, seed: int) -> tuple[float | None, float, float]:
    """(seconds to target or None, best mIoU, total seconds) for one training seed."""
    cfg = quick_cpu_preset()
    cfg.train.seed = seed
    for name, section, field in [
        ("lr", "train", "lr"),
        ("batch", "train", "batch_size"),
        ("epochs", "train", "epochs"),
        ("wd", "train", "weight_decay"),
        ("loss", "train", "loss"),
        ("schedule", "train", "schedule"),
        ("width", "model", "width"),
        ("depth", "model", "depth"),
        ("block", "model", "block"),
        ("image_size", "data", "image_size"),
        ("data_seed", "data", "seed"),
    ]:
        if getattr(args, name) is not None:
            setattr(getattr(cfg, section), field, getattr(args, name))
    if args.bilinear is not None:
        cfg.model.upsampling = "bilinear" if args.bilinear == "on" else "transposed"
    if args.augment is not None:
        cfg.data.augment = args.augment == "on"
    reached, best, first_step = None, 0.0, None
    with tempfile.TemporaryDirectory() as run_dir:
        t0 = time.perf_counter()  # "pressing train": data generation, speedups probe, epochs, checkpoints
        trainer = Trainer(cfg, run_dir, splits=open_builtin(cfg.data))

        def on_event(ev):
            nonlocal reached, best, first_step
            if isinstance(ev, Progress) and first_step is None:
                first_step = time.perf_counter() - t0  # data, speedups probe and model are ready
            elif isinstance(ev, EpochEnd):
                t = time.perf_counter() - t0
                best = max(best, ev.miou)
                if reached is None and ev.miou >= args.target:
                    reached = t
                print(
                    f"  seed {seed} epoch {ev.epoch:2d}  t={t:5.1f}s  epoch {ev.seconds:4.1f}s  "
                    f"{ev.images_per_s:5.0f} img/s  loss {ev.train_loss:.3f}  mIoU {ev.miou:.4f}  "
                    f"per class {' '.join(f'{v:.2f}' for v in ev.per_class_iou if v is not None)}",
                    flush=True,
                )
            elif isinstance(ev, Failed):
                print("  failed:", ev.message, ev.detail)

        trainer.add_callback(on_event)
        t_data = time.perf_counter() - t0
        done = trainer.run()
        total = time.perf_counter() - t0
    if isinstance(done, Done):
        at = "never" if reached is None else f"{reached:.1f}s"
        print(
            f"  seed {seed}: data {t_data:.1f}s, first step done at {first_step:.1f}s, total {total:.1f}s, "
            f"best mIoU {best:.4f}, reached {args.target} at {at}  ({load()})",
            flush=True,
        )
    return reached, best, total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (one run each)")
    p.add_argument("--target", type=float, default=0.90, help="val mIoU to reach")
    for name, kind in [
        ("lr", float),
        ("batch", int),
        ("epochs", int),
        ("wd", float),
        ("loss", str),
        ("schedule", str),
        ("width", int),
        ("depth", int),
        ("block", str),
        ("image_size", int),
        ("data_seed", int),
    ]:
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, help="override the preset")
    p.add_argument("--bilinear", choices=["on", "off"], default=None)
    p.add_argument("--augment", choices=["on", "off"], default=None)
    args = p.parse_args()
    print(machine(), "|", load(), flush=True)
    results = [run_once(args, s) for s in args.seeds]
    times = [r[0] for r in results]
    best = min(r[1] for r in results)
    totals = median([r[2] for r in results])
    key = f"seconds_to_{args.target:.2f}"
    if all(t is not None for t in times):
        print(
            f"{key}={max(times):.1f} worst_of={len(times)} median={median(times):.1f} "
            f"min_best_miou={best:.4f} run_seconds={totals:.1f}"
        )
    else:
        print(
            f"{key}=not_reached reached={sum(t is not None for t in times)}/{len(times)} "
            f"best_miou={best:.4f} run_seconds={totals:.1f}"
        )


if __name__ == "__main__":
    main()
