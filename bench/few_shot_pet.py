"""Few-shot transfer: Oxford-IIIT Pet mini, pet vs background (binary, border ignored), trained on the 20
trainval photos with a preset's plan (default: the app's default, "minute"), scored on the 6 test photos. Two runs
side by side: the encoder the preset chooses for this data (the ImageNet EfficientNet-Lite0) and the same preset
from scratch (the tutorial U-Net, today's recipe before the ImageNet encoder). Medians over --seeds.

    python bench/few_shot_pet.py [--data ../shared/data/oxford-iiit-pet-mini] [--preset minute] [--seeds 3]

The test photos are the validation split the trainer scores each epoch; the figure is the LAST epoch's test
mIoU (no checkpoint is picked on the test photos). Last line: pretrained=... scratch=... (medians).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from common import DEFAULT_DATA, load, machine

from segdemo.core.config import LITE, RunConfig
from segdemo.data import open_dataset
from segdemo.data.base import Splits
from segdemo.events import EpochEnd, Failed
from segdemo.training import recipes
from segdemo.training.trainer import Trainer


def run(data: str, preset: str, encoder: str | None, seed: int, **over) -> tuple[float, float, str]:
    """(last-epoch test mIoU, wall seconds, the plan's why) of one run."""
    t0 = time.perf_counter()
    base = RunConfig()
    base.data.source, base.data.pet_mode, base.train.seed, base.data.seed = f"oxford-pet:{data}", "binary", seed, seed
    with tempfile.TemporaryDirectory() as tmp:
        s = open_dataset(base.data, tmp)
        whole = s.train.base  # all 20 trainval photos (open_dataset split them 16 / 4)
        splits = Splits(whole, s.test, s.classes, description="trainval -> test")
        plan = recipes.plan(recipes.preset(preset), recipes.DataShape.of(splits), base=base, encoder=encoder)
        cfg = plan.config
        for k, v in over.items():
            section = next(sec for sec in (cfg.train, cfg.model, cfg.data) if hasattr(sec, k))
            setattr(section, k, v)
        cfg.train.time_budget_s -= time.perf_counter() - t0  # planning counts against the budget
        last: list[float] = []

        def on_event(ev):
            if isinstance(ev, EpochEnd):
                last.append(ev.miou)
            elif isinstance(ev, Failed):
                raise SystemExit(f"training failed: {ev.message} ({ev.detail})")

        trainer = Trainer(cfg, tmp, splits=splits)
        trainer.add_callback(on_event)
        trainer.run()
    return last[-1], time.perf_counter() - t0, plan.why


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA / "oxford-iiit-pet-mini"))
    p.add_argument("--preset", default=recipes.DEFAULT, choices=list(recipes.BY_KEY))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--lr", type=float, default=None, help="override the plan (experiments)")
    p.add_argument("--encoder-lr", type=float, default=None)
    p.add_argument("--encoder-bn", default=None, choices=["auto", "train", "frozen"])
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--only", choices=["pretrained", "scratch"], default=None)
    args = p.parse_args()
    print(machine(), "|", load(), flush=True)
    over = {
        k: v
        for k, v in (
            ("learning_rate", args.lr),
            ("encoder_lr", args.encoder_lr),
            ("encoder_bn", args.encoder_bn),
            ("image_size", args.image_size),
        )
        if v
    }
    results: dict[str, list[float]] = {"pretrained": [], "scratch": []}
    for seed in range(args.seeds):
        for name, encoder in (("pretrained", None), ("scratch", "unet")):  # None: the preset's own choice
            if args.only and name != args.only:
                continue
            miou, wall, why = run(args.data, args.preset, encoder, seed, **(over if name == "pretrained" else {}))
            assert name == "scratch" or LITE in why or "ImageNet" in why, why
            results[name].append(miou)
            print(f"seed {seed} {name:<10s} test mIoU {miou:.4f}  {wall:5.1f} s  ({load()})", flush=True)
            if seed == 0:
                print(f"  plan: {why}", flush=True)
    med = {k: statistics.median(v) for k, v in results.items() if v}
    print(" ".join(f"{k}={v:.4f}" for k, v in med.items()))


if __name__ == "__main__":
    main()
