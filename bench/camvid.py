"""A CamVid recipe on this CPU: train on camvid/train, evaluate on camvid/val with the shipped class file
(11 classes, void ignored). Images are resized to a square --image-size for the model; evaluation
up-samples the logits to each mask's full 480x360 resolution. Reports the best epoch's val mIoU,
per-class IoU and pixel accuracy (void excluded), and the wall time from start to end.

    python bench/camvid.py [--data ../shared/data/camvid] [--epochs 15] [--image-size 128] [--width 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import DEFAULT_DATA, REPO, load, machine

from segdemo.config import quick_cpu_preset
from segdemo.events import Done, EpochEnd, Failed, Started
from segdemo.trainer import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA / "camvid"), help="folder with train/ and val/")
    p.add_argument("--classes", default=str(REPO / "segdemo" / "data" / "camvid_classes.json"))
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--loss", default="ce_dice")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="run folder to keep (default: a temporary one)")
    args = p.parse_args()
    print(machine(), "|", load(), flush=True)

    cfg = quick_cpu_preset()
    cfg.data.source, cfg.data.classes_file, cfg.data.image_size = args.data, args.classes, args.image_size
    cfg.model.width, cfg.model.depth = args.width, args.depth
    t = cfg.train
    t.epochs, t.batch_size, t.lr, t.loss, t.seed = args.epochs, args.batch, args.lr, args.loss, args.seed
    best: dict = {}
    names: list[str] = []

    def on_event(ev):
        if isinstance(ev, Started):
            names.extend(ev.class_names)
            print(
                f"{ev.n_train} train / {ev.n_val} val, {ev.parameters / 1e6:.2f}M parameters, {ev.precision}",
                flush=True,
            )
        elif isinstance(ev, EpochEnd):
            print(
                f"  epoch {ev.epoch:2d}/{ev.epochs}  {ev.seconds:5.1f}s  {ev.images_per_s:5.1f} img/s  "
                f"loss {ev.train_loss:.3f}/{ev.val_loss:.3f}  mIoU {ev.miou:.4f}  "
                f"acc {ev.pixel_accuracy:.4f}  ({load()})",
                flush=True,
            )
            if ev.is_best:
                best.update(epoch=ev.epoch, miou=ev.miou, acc=ev.pixel_accuracy, iou=ev.per_class_iou)
        elif isinstance(ev, Failed):
            raise SystemExit(f"training failed: {ev.message} ({ev.detail})")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        trainer = Trainer(cfg, args.out or tmp)
        trainer.add_callback(on_event)
        done = trainer.run()
        wall = time.perf_counter() - t0
    assert isinstance(done, Done) and best
    print(f"best epoch {best['epoch']} of {done.epochs_done}; per-class IoU on val (void ignored):")
    for name, v in zip(names, best["iou"], strict=True):
        print(f"  {name:<11s} {'n/a' if v is None else f'{v:.3f}'}")
    print(
        f"camvid_val_miou={best['miou']:.4f} pixel_acc={best['acc']:.4f} best_epoch={best['epoch']} "
        f"wall_s={wall:.0f} epochs={args.epochs} image_size={args.image_size} width={args.width}"
    )


if __name__ == "__main__":
    main()
