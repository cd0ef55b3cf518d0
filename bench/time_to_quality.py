"""The "about a minute" preset against the old fixed Quick settings (64 px, width 8, 8 epochs), side by side
on the built-in shapes: for each seed one run of each, interleaved, each timed from pressing train (data,
planning or speed probe, epochs, checkpoints) to its end. Reports the best val mIoU, when each first
reached the target, and the ratio of their wall times.

    python bench/time_to_quality.py [--seeds 0 1] [--target 0.90] [--preset minute] [--lr 6e-3 ...]

Options after --preset override the preset's plan, for tuning. Last line:
preset_seconds_to_0.90=... preset_min_best_miou=... preset_wall_s=... quick_min_best_miou=... quick_wall_s=...
wall_ratio=... (preset / Quick, medians over the seeds).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import load, machine, median

from segdemo.core.config import quick_cpu_preset
from segdemo.data.builtin import open_builtin
from segdemo.events import Done, EpochEnd, Failed
from segdemo.training import recipes
from segdemo.training.trainer import Trainer

OVERRIDES = [  # (option, config section, field, type)
    ("lr", "train", "learning_rate", float),
    ("batch", "train", "batch_size", int),
    ("epochs", "train", "epochs", int),
    ("wd", "train", "weight_decay", float),
    ("loss", "train", "loss", str),
    ("schedule", "train", "schedule", str),
    ("width", "model", "width", int),
    ("depth", "model", "depth", int),
    ("block", "model", "block", str),
    ("image_size", "data", "image_size", int),
    ("crop_size", "data", "crop_size", int),
    ("budget", "train", "time_budget_s", float),
]


def run_once(args, seed: int, which: str) -> tuple[float | None, float, float]:
    """(seconds to target or None, best mIoU, total seconds) for one run: "quick" or "preset"."""
    reached, best = None, 0.0
    with tempfile.TemporaryDirectory() as run_dir:
        t0 = time.perf_counter()  # pressing train
        cfg = quick_cpu_preset()
        cfg.train.seed = seed
        splits = open_builtin(cfg.data)
        if which == "preset":
            plan = recipes.plan(recipes.preset(args.preset), recipes.DataShape.of(splits), base=cfg)
            cfg = plan.config
            for name, section, field, _ in OVERRIDES:
                if getattr(args, name) is not None:
                    setattr(getattr(cfg, section), field, getattr(args, name) or None)  # --budget 0: no limit
            print(f"  {plan.why}", flush=True)
        trainer = Trainer(cfg, run_dir, splits=splits)

        def on_event(ev):
            nonlocal reached, best
            if isinstance(ev, EpochEnd):
                t = time.perf_counter() - t0
                best = max(best, ev.miou)
                if reached is None and ev.miou >= args.target:
                    reached = t
                print(
                    f"  {which} seed {seed} epoch {ev.epoch:2d}/{ev.epochs}  t={t:5.1f}s  {ev.images_per_s:4.0f} img/s"
                    f"  lr {ev.lr:.1e}  loss {ev.train_loss:.3f}  mIoU {ev.miou:.4f}  per class "
                    f"{' '.join(f'{v:.2f}' for v in ev.per_class_iou if v is not None)}",
                    flush=True,
                )
            elif isinstance(ev, Failed):
                print("  failed:", ev.message, ev.detail)

        trainer.add_callback(on_event)
        done = trainer.run()
        total = time.perf_counter() - t0
    if isinstance(done, Done):
        at = "never" if reached is None else f"{reached:.1f}s"
        print(
            f"  {which} seed {seed}: {done.reason} after {done.epochs_done} epochs, {total:.1f}s; "
            f"best mIoU {best:.4f}, reached {args.target} at {at}  ({load()})",
            flush=True,
        )
    return reached, best, total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (one run of each per seed)")
    p.add_argument("--target", type=float, default=0.90, help="val mIoU to reach")
    p.add_argument("--preset", default="minute", choices=list(recipes.BY_KEY))
    p.add_argument("--no-quick", action="store_true", help="skip the Quick runs (tuning only; prints no ratio)")
    for name, _, _, kind in OVERRIDES:
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, help="override the preset's plan")
    args = p.parse_args()
    print(machine(), "|", load(), flush=True)
    res: dict[str, list] = {"preset": [], "quick": []}
    for seed in args.seeds:  # interleaved, so a change in the machine's load falls on both
        res["preset"].append(run_once(args, seed, "preset"))
        if not args.no_quick:
            res["quick"].append(run_once(args, seed, "quick"))
    times = [r[0] for r in res["preset"]]
    key = f"preset_seconds_to_{args.target:.2f}"
    reached = f"{max(times):.1f}" if all(t is not None for t in times) else "not_reached"
    line = (
        f"{key}={reached} preset_min_best_miou={min(r[1] for r in res['preset']):.4f} "
        f"preset_wall_s={median([r[2] for r in res['preset']]):.1f}"
    )
    if res["quick"]:
        quick_wall = median([r[2] for r in res["quick"]])
        line += (
            f" quick_min_best_miou={min(r[1] for r in res['quick']):.4f} quick_wall_s={quick_wall:.1f} "
            f"wall_ratio={median([r[2] for r in res['preset']]) / quick_wall:.2f}"
        )
    print(line)


if __name__ == "__main__":
    main()
