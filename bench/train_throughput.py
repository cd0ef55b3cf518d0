"""Training images/s: our Trainer (quick CPU preset, built-in data) against a plain fp32 loop written the way
the tutorials write it (same U-Net, batch, resolution and augmentation; per-sample Normalize + ToTensorV2 in
a DataLoader, torch.optim.Adam, nn.CrossEntropyLoss, NCHW, zero_grad/backward/step).

They run side by side in one process: the Trainer's progress callback pauses it every --steps steps and
runs the same number of tutorial steps, for --rounds rounds (the first of each is a warm-up and dropped).
The Trainer's time is measured between its own consecutive progress events within an epoch, so its
evaluation and checkpointing between epochs do not count, as in its own images/s figure.

    python bench/train_throughput.py [--steps 12] [--rounds 8] [--batch 8] [--image-size 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import albumentations as A
import torch
from albumentations.pytorch import ToTensorV2
from common import busy_processes, load, machine, median
from torch import nn
from torch.utils.data import DataLoader, Dataset

from segdemo.core import speedups
from segdemo.core.config import quick_cpu_preset
from segdemo.core.model import UNet
from segdemo.core.transforms import train_transform
from segdemo.data.base import IGNORE
from segdemo.data.builtin import open_builtin
from segdemo.events import EpochEnd, Failed, Progress, Started
from segdemo.training.trainer import Trainer


class TutorialDataset(Dataset):
    """Per-sample augmentation, normalisation and tensor conversion, as in the albumentations examples."""

    def __init__(self, source, cfg):
        self.source = source
        self.tf = A.Compose(
            [*train_transform(cfg.data).transforms, A.Normalize(cfg.data.mean, cfg.data.std), ToTensorV2()]
        )

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        image, mask = self.source.load(i)
        out = self.tf(image=image, mask=mask)
        return out["image"], out["mask"].long()


class TutorialLoop:
    def __init__(self, cfg, source):
        self.threads = torch.get_num_threads()  # torch's default; the Trainer sets its own while it runs
        torch.manual_seed(0)
        m = cfg.model
        self.model = UNet(m.num_classes, depth=m.depth, width=m.width, bilinear=m.upsampling == "bilinear")
        self.model.train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.train.learning_rate)
        self.crit = nn.CrossEntropyLoss(ignore_index=IGNORE)
        self.loader = DataLoader(
            TutorialDataset(source, cfg),
            batch_size=cfg.train.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=cfg.train.num_workers,
        )
        self.batches = self._forever()
        self.running_loss = 0.0

    def _forever(self):
        while True:
            yield from self.loader

    def images_per_s(self, steps: int) -> float:
        trainer_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        n, t0 = 0, time.perf_counter()
        for _ in range(steps):
            images, masks = next(self.batches)
            self.opt.zero_grad()
            loss = self.crit(self.model(images), masks)
            loss.backward()
            self.opt.step()
            self.running_loss += loss.item()
            n += len(images)
        rate = n / (time.perf_counter() - t0)
        torch.set_num_threads(trainer_threads)
        return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12, help="training steps per timed window")
    p.add_argument("--rounds", type=int, default=8, help="timed windows of each (after one warm-up window)")
    p.add_argument("--batch", type=int, default=None, help="override the preset's batch size")
    p.add_argument("--image-size", type=int, default=None, help="override the preset's image size")
    p.add_argument("--busy", type=int, default=0, help="spinning processes to run alongside (other work)")
    args = p.parse_args()
    print(machine(), "|", load(), flush=True)

    cfg = quick_cpu_preset()
    cfg.train.epochs = 10_000  # stopped by the race below, never by the schedule
    cfg.train.batch_size = args.batch or cfg.train.batch_size
    cfg.data.image_size = args.image_size or cfg.data.image_size
    splits = open_builtin(cfg.data)
    cfg.model.num_classes = splits.classes.num_classes
    tutorial = TutorialLoop(cfg, splits.train)
    bs = cfg.train.batch_size
    ours, theirs, state = [], [], {"t_last": None, "time": 0.0, "steps": 0, "threads": None}

    def on_event(ev):
        if isinstance(ev, Progress):
            now = time.perf_counter()
            state["threads"] = state["threads"] or torch.get_num_threads()
            if ev.batch > 1 and state["t_last"] is not None:
                state["time"] += now - state["t_last"]
                state["steps"] += 1
            if state["steps"] == args.steps:
                ours.append(args.steps * bs / state["time"])
                theirs.append(tutorial.images_per_s(args.steps))
                state.update(time=0.0, steps=0)
                print(
                    f"  round {len(ours) - 1}: trainer {ours[-1]:6.1f} img/s   tutorial "
                    f"{theirs[-1]:6.1f} img/s   ({load()})",
                    flush=True,
                )
            state["t_last"] = time.perf_counter()
        elif isinstance(ev, EpochEnd):
            state["t_last"] = None  # the next epoch's first step includes building its loader: skip it
        elif isinstance(ev, Started):
            print("trainer chose:", ev.precision, flush=True)
        elif isinstance(ev, Failed):
            raise SystemExit(f"trainer failed: {ev.message} {ev.detail}")

    with tempfile.TemporaryDirectory() as run_dir, busy_processes(args.busy):
        trainer = Trainer(cfg, run_dir, splits=splits, should_stop=lambda: len(ours) > args.rounds)
        trainer.add_callback(on_event)
        trainer.run()

    # The probe's measurements (cached by the Trainer's call with the same arguments).
    cands = ((None, False), (None, True))
    if speedups.cpu_has_native_bf16():
        cands += ((torch.bfloat16, True), (torch.bfloat16, False))
    probe = speedups._measure_cpu(speedups._key(cfg.model), cfg.data.image_size, cands, state["threads"])
    print(
        "speedups probe (s per 4-image step):",
        ", ".join(f"{speedups._label(d, c)} {t:.3f}" for (d, c), t in probe.items()),
    )
    ours, theirs = ours[1:], theirs[1:]  # drop the warm-up round
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    print(
        f"{len(ours)} rounds of {args.steps} steps, batch {bs}, {cfg.data.image_size}px, "
        f"width {cfg.model.width}, depth {cfg.model.depth}, up-sampling {cfg.model.upsampling}, torch threads: "
        f"trainer {state['threads']}, tutorial {tutorial.threads}, {args.busy} busy processes | {load()}"
    )
    print(
        f"trainer_img_s={median(ours):.1f} tutorial_img_s={median(theirs):.1f} "
        f"ratio={median(ratios):.2f} ratio_min={min(ratios):.2f} ratio_max={max(ratios):.2f}"
    )


if __name__ == "__main__":
    main()
