"""CamVid with a time-budget preset on this machine: train on camvid/train, evaluate on camvid/val with the
shipped class file (11 classes, void ignored), every image whole at the training scale and scored at its
full 480x360 resolution. The preset plans scale, width and epochs from the data and a timed probe of this
machine (segdemo/training/recipes.py); --minutes sets its budget. Options override the plan, for experiments.

    python bench/camvid.py [--data ../shared/data/camvid] [--minutes 20] [--preset 10min] [--out RUN_DIR]

Last line: val_miou=... pixel_acc=... minutes=... zero_classes=... (the best checkpoint's, which is what the
run hands over; the last epoch's mIoU is printed above it).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

from common import DEFAULT_DATA, REPO, load, machine

from segdemo.core.config import RunConfig
from segdemo.data import open_dataset
from segdemo.events import Done, EpochEnd, Failed, Started
from segdemo.training import recipes
from segdemo.training.trainer import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA / "camvid"), help="folder with train/ and val/")
    p.add_argument("--classes", default=str(REPO / "segdemo" / "data" / "camvid_classes.json"))
    p.add_argument("--preset", default="10min", choices=list(recipes.BY_KEY))
    p.add_argument("--minutes", type=float, default=20.0, help="the time budget (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="run folder to keep (default: a temporary one)")
    p.add_argument("--encoder", default=None, help="override the preset's choice (unet: from scratch)")
    for name, kind in [("image_size", int), ("crop_size", int), ("width", int), ("epochs", int), ("batch", int),
                       ("lr", float), ("loss", str), ("block", str), ("schedule", str), ("encoder_bn", str),
                       ("encoder_lr", float), ("precision", str)]:  # fmt: skip
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, help="override the plan")
    args = p.parse_args()
    print(machine(), "|", load(), flush=True)

    t0 = time.perf_counter()  # "pressing train": opening the data and planning count against the budget
    base = RunConfig()
    base.data.source, base.data.classes_file, base.train.seed = args.data, args.classes, args.seed
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.out or tmp
        splits = open_dataset(base.data, run_dir)
        preset = dataclasses.replace(recipes.preset(args.preset), seconds=args.minutes * 60)
        plan = recipes.plan(preset, recipes.DataShape.of(splits), base=base, encoder=args.encoder)
        cfg = plan.config
        for name, section, field in [("image_size", "data", "image_size"), ("crop_size", "data", "crop_size"),
                                     ("width", "model", "width"), ("epochs", "train", "epochs"),
                                     ("batch", "train", "batch_size"), ("lr", "train", "learning_rate"),
                                     ("loss", "train", "loss"), ("block", "model", "block"),
                                     ("schedule", "train", "schedule"), ("encoder_bn", "train", "encoder_bn"),
                                     ("encoder_lr", "train", "encoder_lr"),
                                     ("precision", "train", "precision")]:  # fmt: skip
            if getattr(args, name) is not None:
                setattr(getattr(cfg, section), field, getattr(args, name))
        cfg.train.time_budget_s = args.minutes * 60 - (time.perf_counter() - t0)  # planning spent some already
        print(plan.why, flush=True)
        print(
            f"config: scale {cfg.data.image_size} ({cfg.data.resize} side), crop {cfg.data.crop}, width "
            f"{cfg.model.width}, encoder {cfg.model.encoder}, block {cfg.model.block}, {cfg.train.epochs} epochs, "
            f"batch {cfg.train.batch_size}, "
            f"lr {cfg.train.learning_rate}, loss {cfg.train.loss}, schedule {cfg.train.schedule}",
            flush=True,
        )
        best: dict = {}
        last: dict = {}
        names: list[str] = []

        def on_event(ev):
            if isinstance(ev, Started):
                names.extend(ev.class_names)
                print(f"{ev.n_train} train / {ev.n_val} val, {ev.parameters / 1e6:.2f}M parameters, {ev.precision}")
            elif isinstance(ev, EpochEnd):
                print(
                    f"  epoch {ev.epoch:3d}/{ev.epochs}  t={time.perf_counter() - t0:6.0f}s  {ev.images_per_s:5.1f} "
                    f"img/s  loss {ev.train_loss:.3f}/{ev.val_loss:.3f}  lr {ev.lr:.1e}  mIoU {ev.miou:.4f}  "
                    f"acc {ev.pixel_accuracy:.4f}  ({load()})",
                    flush=True,
                )
                last.update(epoch=ev.epoch, miou=ev.miou)
                if ev.is_best:
                    best.update(epoch=ev.epoch, miou=ev.miou, acc=ev.pixel_accuracy, iou=ev.per_class_iou)
            elif isinstance(ev, Failed):
                raise SystemExit(f"training failed: {ev.message} ({ev.detail})")

        trainer = Trainer(cfg, run_dir, splits=splits)
        trainer.add_callback(on_event)
        done = trainer.run()
        wall = time.perf_counter() - t0
    assert isinstance(done, Done) and best
    zero = [n for n, v in zip(names, best["iou"], strict=True) if v is not None and v < 0.005]
    print(f"{done.reason} after {done.epochs_done} epochs; last epoch mIoU {last['miou']:.4f}")
    print(f"best epoch {best['epoch']}; per-class IoU on val (void ignored):")
    for name, v in zip(names, best["iou"], strict=True):
        print(f"  {name:<11s} {'n/a' if v is None else f'{v:.3f}'}")
    lowest = min(v for v in best["iou"] if v is not None)
    print(
        f"val_miou={best['miou']:.4f} pixel_acc={best['acc']:.4f} minutes={wall / 60:.1f} "
        f"lowest_class_iou={lowest:.3f} zero_classes={len(zero)}{' (' + ','.join(zero) + ')' if zero else ''}"
    )


if __name__ == "__main__":
    main()
