"""`segdemo train|evaluate|predict|check|export|app` (or `python -m segdemo ...`): parse, build the config, print the
engine's events, or serve the web app."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from segdemo import logs
from segdemo.errors import ConfigError, UserError, is_user_error

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # it otherwise checks the internet for updates
log = logging.getLogger("segdemo.cli")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.log_file = None  # cmd_train sets it: the run folder's train.log
    handlers = []
    if args.verbose or args.command != "app":  # the app logs to stderr at INFO by itself (ui.launch)
        handlers.append(logs.log_to_stderr(logging.DEBUG if args.verbose else logging.WARNING, tracebacks=args.verbose))
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as e:  # user mistakes (segdemo.errors) become one line; a bug is logged with its traceback
        if is_user_error(e):
            log.debug("refused", exc_info=True)  # where it came from, with --verbose
            print(f"error: {e}", file=sys.stderr)
            return 2
        log.exception("segdemo %s failed", args.command)
        print(
            f"error: an unexpected {type(e).__name__} (a bug in segdemo, not in your input): {e}; "
            f"{_where_the_traceback_is(args)}",
            file=sys.stderr,
        )
        return 1
    finally:
        for h in handlers + getattr(args, "log_handlers", []):
            logs.remove(h)


def _where_the_traceback_is(args) -> str:
    if args.verbose:
        return "its traceback is above"
    if args.log_file is not None:
        return f"its traceback is in {args.log_file} (or run again with --verbose)"
    return "run again with --verbose to see its traceback"


# -- train ------------------------------------------------------------------------------------------


def _budget_seconds(args: argparse.Namespace) -> float | None:
    """--time-budget (minutes) or its older --time-limit (seconds), in the config's seconds."""
    if args.time_budget is not None and args.time_limit is not None:
        raise ConfigError("give --time-budget (minutes) or --time-limit (seconds), not both")
    return args.time_budget * 60 if args.time_budget is not None else args.time_limit


def cmd_train(args) -> int:
    from segdemo.core.config import quick_cpu_preset
    from segdemo.events import Done, EpochEnd, Failed, Progress, Started
    from segdemo.training.trainer import Trainer

    cfg = quick_cpu_preset()
    _apply_train_args(cfg, args)
    out, splits, why = Path(args.out), None, None
    if args.preset and not args.resume:  # a resumed run keeps the plan it began with (its stored config)
        splits, cfg, why = _planned(cfg, args, out)
    cfg.validate()  # a ConfigError: one line, exit code 2
    out = Path(args.out)
    if not args.resume and (out / "last.safetensors").exists():
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    # Every run keeps its engine log, tracebacks included, beside its checkpoints (appended on --resume).
    args.log_file = out / "train.log"
    errors = logs.ErrorSeen()
    logging.getLogger(logs.ROOT).addHandler(errors)
    args.log_handlers = [logs.log_to_file(args.log_file), errors]
    log.info("segdemo train into %s%s; config %s", out, " (resume)" if args.resume else "", json.dumps(cfg.to_dict()))
    if why:
        log.info("preset: %s", why)

    tty = sys.stderr.isatty()

    def show(ev) -> None:
        if isinstance(ev, Started | Done | Failed):  # the trainer logs each epoch itself
            log.info("%s", _event_line(ev))
        if isinstance(ev, Started):
            print(
                f"training on {ev.device}, {ev.precision}; {ev.n_train} train / {ev.n_val} val images; "
                f"{ev.parameters / 1e6:.2f}M parameters; classes: {', '.join(ev.class_names)}",
                flush=True,
            )
            for note in ev.notes:
                print(f"note: {note}", flush=True)
            for warning in ev.warnings:
                print(f"warning: {warning}", flush=True)
            if ev.selection:
                print(f"note: {ev.selection}", flush=True)
        elif isinstance(ev, Progress) and tty:
            bar = "#" * int(20 * ev.batch / max(ev.n_batches, 1))
            print(
                f"\r  epoch {ev.epoch} [{bar:<20}] {ev.batch}/{ev.n_batches} loss {ev.loss:.3f} "
                f"{ev.images_per_s:.0f} img/s",
                end="",
                file=sys.stderr,
                flush=True,
            )
        elif isinstance(ev, EpochEnd):
            if tty:
                print("\r" + " " * 79 + "\r", end="", file=sys.stderr)
            print(
                f"epoch {ev.epoch:>3}/{ev.epochs}  train_loss {ev.train_loss:.4f}  val_loss {ev.val_loss:.4f}  "
                f"mIoU {ev.miou:.4f}  acc {ev.pixel_accuracy:.4f}  lr {ev.lr:.2e}  {ev.images_per_s:.1f} img/s  "
                f"{ev.seconds:.1f}s{'  *best' if ev.is_best else ''}"
                + (f"  (train-photo mIoU {ev.train_miou:.4f})" if ev.train_miou is not None else ""),
                flush=True,
            )
        elif isinstance(ev, Done):
            best = f"kept epoch {ev.best_epoch}, val mIoU {ev.best_miou:.4f}" if ev.best_miou is not None else "none"
            print(f"{ev.reason} after {ev.epochs_done} epochs in {ev.seconds:.1f}s; {best}; checkpoints in {out}")

    from segdemo.training import distributed

    world = distributed.init_from_env(cfg.train.device)  # under torchrun: one process of N
    try:
        trainer = Trainer(cfg, out, resume=args.resume, splits=splits)
        if world.is_main:  # one process speaks for the run
            if why:
                print(why, flush=True)
            trainer.add_callback(show)
        result = trainer.run()
    finally:
        distributed.leave()
    if isinstance(result, Failed):
        where = f" (the traceback is in {args.log_file}; --verbose shows it here)" if errors.seen else ""
        print(f"error: {result.message}{where}", file=sys.stderr)
        return 2
    return 0


def _apply_train_args(cfg, args) -> None:
    """The options the user gave, onto a config (they win over the defaults and over a preset's plan)."""
    from segdemo.core.config import use_encoder

    d, m, t = cfg.data, cfg.model, cfg.train
    d.source = args.data
    _set(
        d,
        image_size=args.image_size,
        resize=args.resize,
        crop_size=args.crop_size,
        window=args.window,
        scale_range=tuple(args.scale_range) if args.scale_range else None,
        seed=args.seed,
        classes_file=args.classes,
        pet_mode=args.pet_mode,
        train_images=args.train_images,
        val_fraction=args.val_fraction,
    )
    d.augment = not args.no_augment
    d.download = args.download
    if args.encoder:  # with what goes with it: lite0's normalisation and, unless --no-pretrained, its weights
        use_encoder(cfg, args.encoder, args.pretrained)
    _set(m, width=args.width, depth=args.depth, block=args.block, upsampling=args.upsampling)
    _set(m, encoder_weights=args.encoder_weights, pretrained=args.pretrained)
    _set(
        t,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        loss=args.loss,
        schedule=args.schedule,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        channels_last=args.channels_last,
        time_budget_s=_budget_seconds(args),
        num_workers=args.workers,
        encoder_lr=args.encoder_lr,
        encoder_bn=args.encoder_bn,
    )
    if args.freeze_encoder:
        t.freeze_encoder = True


def _planned(cfg, args, out: Path):
    """(splits, config, why) for --preset: open the data, measure this machine, plan; the user's options win.

    Under torchrun every process takes process 0's plan (each would measure a slightly different speed)."""
    from segdemo.data import open_dataset
    from segdemo.training import distributed, recipes

    cfg.validate()
    out.mkdir(parents=True, exist_ok=True)
    splits = open_dataset(cfg.data, out)  # a .zip is unpacked into the run folder, as the trainer would
    plan = recipes.plan(recipes.preset(args.preset), recipes.DataShape.of(splits), base=cfg, encoder=args.encoder)
    world = distributed.init_from_env(cfg.train.device)
    planned, why = distributed.from_main((plan.config.to_dict(), plan.why), world)
    cfg = type(cfg).from_dict(planned)
    _apply_train_args(cfg, args)
    return splits, cfg, why


def _event_line(ev) -> str:
    """An event for train.log: its type and fields, without the pictures and the confusion matrix."""
    fields = {k: v for k, v in vars(ev).items() if k not in ("previews", "worst", "confusion")}
    return f"{type(ev).__name__} {json.dumps(fields, default=str)}"


def _set(obj, **values) -> None:
    """Copy the options the user gave (not None) onto a config section."""
    for k, v in values.items():
        if v is not None:
            setattr(obj, k, v)


# -- evaluate ---------------------------------------------------------------------------------------


def cmd_evaluate(args) -> int:
    from segdemo.core.checkpoint import load_checkpoint, resolve_checkpoint
    from segdemo.core.evaluate import evaluate_model
    from segdemo.core.metrics import confusion_to_dict
    from segdemo.data import open_dataset

    ck = load_checkpoint(resolve_checkpoint(args.checkpoint))
    cfg = ck.config
    cfg.data.source = args.data
    if args.classes:
        cfg.data.classes_file = args.classes
    with tempfile.TemporaryDirectory(prefix="segdemo-eval-") as tmp:
        splits = open_dataset(cfg.data, Path(tmp))
        if splits.classes.names != ck.classes.names:
            raise UserError(
                f"the data's classes ({', '.join(splits.classes.names)}) differ from the checkpoint's "
                f"({', '.join(ck.classes.names)}); evaluate on the dataset it was trained for"
            )
        source = {"val": splits.val, "train": splits.train, "test": splits.test}[args.split]
        if source is None or len(source) == 0:
            raise UserError(f"the data has no {args.split} split")
        res = evaluate_model(ck.model, source, cfg, ck.classes, batch_size=8)
    names = ck.classes.names
    assert res.confusion is not None  # evaluate_model always counts one
    doc = {
        **res.metrics.to_dict(names),
        "split": args.split,
        "images": len(source),
        "confusion": confusion_to_dict(res.confusion, names),
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"{args.split}: {len(source)} images  mIoU {doc['miou']:.4f}  pixel accuracy {doc['pixel_accuracy']:.4f}")
    print(_table(doc["per_class"]))
    pairs = doc["confusion"]["most_confused"]
    if pairs:
        print("most confused (share of the true class's pixels):")
        print("\n".join(f"  {p['sentence']}" for p in pairs))
    return 0


def _table(rows: list[dict]) -> str:
    fmt = lambda v: "  n/a" if v is None else f"{v:.3f}"  # noqa: E731
    width = max(len(r["name"]) for r in rows)
    lines = [f"{'class':<{width}}  {'IoU':>5}  {'Dice':>5}  {'share':>6}"]
    lines += [
        f"{r['name']:<{width}}  {fmt(r['iou']):>5}  {fmt(r['dice']):>5}  {100 * r['pixel_share']:5.1f}%" for r in rows
    ]
    return "\n".join(lines)


# -- predict ----------------------------------------------------------------------------------------


def cmd_predict(args) -> int:
    import torch
    from PIL import Image

    from segdemo.core.metrics import metrics_from_confusion
    from segdemo.core.predict import MaskIndex, Predictor

    predictor = Predictor.from_path(args.checkpoint)
    names = predictor.classes.names
    masks = _mask_files(args.masks) if args.masks else []
    index = MaskIndex(masks, len(args.images))
    if masks:
        index.require_a_match(args.images)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed, scored, total = 0, 0, torch.zeros(len(names), len(names), dtype=torch.int64)
    for path in args.images:
        mask_path = index.mask_for(path)
        try:
            result = predictor.predict_file(path, mask_path, alpha=args.alpha)
        except Exception as e:
            if not is_user_error(e):
                raise
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        p, image = result.prediction, result.image
        stem = Path(path).stem
        Image.fromarray(p.mask).save(out / f"{stem}_mask.png")  # class ids, not colours
        Image.fromarray(p.color).save(out / f"{stem}_color.png")
        Image.fromarray(p.overlay).save(out / f"{stem}_overlay.png")
        shares = ", ".join(f"{n} {100 * s:.1f}%" for n, s in zip(names, p.pixel_share, strict=True))
        score = ""
        if p.metrics is not None:
            assert p.confusion is not None and mask_path is not None  # a score comes with both
            total += p.confusion
            scored += 1
            score = f"; against {Path(mask_path).name}: mIoU {p.metrics.miou:.4f}"
        print(f"{path}: {image.shape[1]}x{image.shape[0]} -> {out / (stem + '_mask.png')} ({shares}){score}")
    if masks:
        missing = len(args.images) - failed - scored
        doc = metrics_from_confusion(total).to_dict(names)  # one confusion matrix over all scored images
        print(
            f"scored {scored} image(s) against their masks"
            + (f" ({missing} had none)" if missing else "")
            + f": mIoU {_fmt(doc['miou'])}  pixel accuracy {_fmt(doc['pixel_accuracy'])}"
        )
        print(_table(doc["per_class"]))
    return 2 if failed else 0


def _mask_files(where: list[str]) -> list[str]:
    """--masks: files, or folders whose image files are the masks."""
    from segdemo.imageio import IMAGE_SUFFIXES

    files = []
    for w in where:
        p = Path(w)
        if p.is_dir():
            files += sorted(str(f) for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(str(p))
        else:
            raise UserError(f"--masks {w} is neither a folder nor a file")
    if not files:
        raise UserError(f"--masks {' '.join(where)} holds no image files")
    return files


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


# -- check ------------------------------------------------------------------------------------------


def cmd_check(args) -> int:
    from segdemo.core.config import DataConfig
    from segdemo.data import check_source

    cfg = DataConfig(source=args.dir, classes_file=args.classes)
    with tempfile.TemporaryDirectory(prefix="segdemo-check-") as tmp:
        report = check_source(cfg, Path(tmp))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_text())
    return 0 if report.ok else 1


# -- app --------------------------------------------------------------------------------------------


def cmd_app(args) -> int:
    from segdemo.ui import build_demo, launch

    if args.cluster:  # read where the job manager is made (segdemo/server/cluster.py)
        from segdemo.server.cluster import ADDRESS_ENV

        os.environ[ADDRESS_ENV] = args.cluster
    kw = {"server_name": args.host, "server_port": args.port, "share": args.share or None}
    launch(build_demo(), **{k: v for k, v in kw.items() if v is not None})  # blocks until Ctrl+C
    return 0


# -- export -----------------------------------------------------------------------------------------


def cmd_export(args) -> int:
    from segdemo.export.exporter import export_model

    res = export_model(args.checkpoint, args.out, fmt=args.format)  # ExportError: one line, exit code 2
    check = (
        "not checked: onnxruntime is not installed"
        if res.max_abs_diff is None
        else (f"logits within {res.max_abs_diff:.1e} of PyTorch")
    )
    print(f"exported {args.checkpoint} as {res.format} ({check}):")
    for path in res.paths:
        print(f"  {path}")
    print(f"try it: python {res.script} IMAGE [IMAGE ...] --out preds/")
    return 0


# -- argument parsing -------------------------------------------------------------------------------


def version() -> str:
    """The installed distribution's version when it is the segdemo being run, else segdemo.__version__ (a
    source checkout, or an editable install whose metadata may be older than the code)."""
    import segdemo

    try:
        dist = metadata.distribution("segdemo")
        if Path(str(dist.locate_file("segdemo/__init__.py"))).resolve() == Path(segdemo.__file__).resolve():
            return dist.version
    except (metadata.PackageNotFoundError, OSError, TypeError):
        pass
    return segdemo.__version__


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to each option's help, except flags (off unless given) and options whose
    default depends on something else (None): their help says what that is."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    from segdemo.core.config import BLOCKS, ENCODER_BN, SCHEDULES, UPSAMPLINGS, quick_cpu_preset
    from segdemo.core.encoders import ENCODERS
    from segdemo.core.losses import LOSSES
    from segdemo.training import recipes

    defaults = quick_cpu_preset()

    def preset(what: str, get) -> str:
        """Help for a training setting: its default without --preset."""
        return f"{what} (default: {get(defaults)})"

    prog = "python -m segdemo" if Path(sys.argv[0]).name == "__main__.py" else "segdemo"
    fmt: dict[str, Any] = dict(formatter_class=_HelpFormatter)
    p = argparse.ArgumentParser(
        prog=prog, description="Train, evaluate and use a U-Net for semantic segmentation, or serve the web app.", **fmt
    )
    p.add_argument("--version", action="version", version=f"segdemo {version()}")
    sub = p.add_subparsers(required=True, metavar="COMMAND", dest="command")
    # every command takes --verbose: engine logs on stderr, and the traceback of a bug
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", help="show the engine's log and any traceback on stderr"
    )
    fmt = dict(fmt, parents=[common])

    t = sub.add_parser("train", help="train a U-Net; writes checkpoints, metrics.jsonl and curves.png to --out", **fmt)
    t.add_argument("--data", default="builtin", help="builtin | a folder dataset | a .zip of one | oxford-pet[:ROOT]")
    t.add_argument("--out", required=True, help="run folder to create (or to continue with --resume)")
    t.add_argument(
        "--preset",
        choices=list(recipes.BY_KEY),
        help="a time budget: "
        + "; ".join(f"{p.key}: {p.label.lower()}" for p in recipes.PRESETS)
        + ". It measures this machine and the data and picks the scale, width and epochs so the run ends "
        "(learning rate at its end, best checkpoint kept) when the budget does; options you give win. "
        "Without it: the fixed settings below (--time-budget to bound them)",
    )
    t.add_argument("--epochs", type=int, help=preset("passes over the training images", lambda c: c.train.epochs))
    t.add_argument("--batch-size", type=int, help=preset("images per step", lambda c: c.train.batch_size))
    # one name per setting, as the Train tab and the config say it; the older flag still works
    t.add_argument(
        "--learning-rate",
        "--lr",
        dest="learning_rate",
        type=float,
        help=preset("peak learning rate (--lr: its older name)", lambda c: c.train.learning_rate),
    )
    t.add_argument(
        "--image-size",
        type=int,
        help=preset(
            "training scale in pixels: the --resize side of every image becomes this, aspect ratio kept",
            lambda c: c.data.image_size,
        ),
    )
    t.add_argument(
        "--resize",
        choices=["short", "long", "square"],
        help=preset(
            "which side --image-size sets (square: squash, as checkpoints before aspect-kept geometry did)",
            lambda c: c.data.resize,
        ),
    )
    t.add_argument(
        "--crop-size",
        type=int,
        help="square training crop in pixels, padded with the ignore index where the image is smaller "
        "(default: the image size)",
    )
    t.add_argument(
        "--scale-range",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help=preset("random scale jitter for training", lambda c: " ".join(map(str, c.data.scale_range))),
    )
    t.add_argument(
        "--window",
        type=int,
        help="sliding window (pixels at the training scale) for evaluating and predicting images larger "
        "than it (default: the whole image in one pass)",
    )
    t.add_argument(
        "--loss",
        choices=LOSSES.ids,
        help=preset("training loss: " + "; ".join(f"{e.id}: {e.label}" for e in LOSSES), lambda c: c.train.loss),
    )
    t.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help=preset(
            "learning rate over the run: warm-up + cosine decay, halve on a plateau of val mIoU, or constant",
            lambda c: c.train.schedule,
        ),
    )
    t.add_argument("--width", type=int, help=preset("channels of the first U-Net level", lambda c: c.model.width))
    t.add_argument("--depth", type=int, help=preset("number of down-sampling steps", lambda c: c.model.depth))
    t.add_argument(
        "--upsampling",
        "--upsample",
        choices=UPSAMPLINGS,  # --upsample: its name before 0.2
        help=preset("decoder up-sampling", lambda c: c.model.upsampling),
    )
    t.add_argument(
        "--encoder",
        choices=ENCODERS.ids,
        help=preset("encoder: " + "; ".join(f"{e.id}: {e.help}" for e in ENCODERS), lambda c: c.model.encoder),
    )
    t.add_argument(
        "--block",
        choices=BLOCKS,
        help=preset("the U-Net's conv block: plain (two convs) or residual (plus a shortcut)", lambda c: c.model.block),
    )
    t.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ImageNet weights for the encoder: a ResNet's downloaded (see --weights), efficientnet_lite0's from "
        "its package (on by default with it); --no-pretrained starts from random weights",
    )
    t.add_argument(
        "--encoder-lr",
        type=float,
        help=preset(
            "a pretrained encoder's learning rate as a fraction of --learning-rate", lambda c: c.train.encoder_lr
        ),
    )
    t.add_argument(
        "--encoder-bn",
        choices=ENCODER_BN,
        help=preset(
            "a pretrained encoder's BatchNorm statistics: train, frozen, or auto (frozen for small batches)",
            lambda c: c.train.encoder_bn,
        ),
    )
    t.add_argument(
        "--freeze-encoder",
        action="store_true",
        help="instant mode: keep the pretrained encoder as it is and train only the decoder (features computed once)",
    )
    t.add_argument(
        "--encoder-weights",
        "--weights",
        dest="encoder_weights",
        metavar="FILE",
        help="ImageNet weights for the ResNet encoder from a local file, offline: a torchvision state dict "
        "(.pth, e.g. resnet18-f37072fd.pth) or .safetensors (--weights: its older name)",
    )
    t.add_argument(
        "--no-augment",
        action="store_true",
        help="train without the flips, scale/rotate and brightness/contrast changes",
    )
    t.add_argument(
        "--classes",
        help="classes JSON for a folder dataset: names, colors, ignore_index (default: the "
        "dataset's classes.json, else classes found in the masks)",
    )
    t.add_argument(
        "--pet-mode",
        choices=["trimap", "binary"],
        help=preset("Oxford-IIIT Pet labels: trimap, or binary with the border ignored", lambda c: c.data.pet_mode),
    )
    t.add_argument("--download", action="store_true", help="download Oxford-IIIT Pet if missing (needs internet)")
    t.add_argument(
        "--val-fraction",
        type=float,
        help=preset(
            "share of the images held out for validation when the data has no val/ split", lambda c: c.data.val_fraction
        ),
    )
    t.add_argument(
        "--train-images",
        "--max-train-images",
        dest="train_images",
        type=int,
        help="train on at most this many images (default: all; --max-train-images: its older name)",
    )
    t.add_argument(
        "--seed",
        type=int,
        help=preset("seed for the built-in data, the split, the weights and augmentation", lambda c: c.train.seed),
    )
    t.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        help=preset("where to train; auto takes CUDA when present", lambda c: c.train.device),
    )
    t.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        help=preset("number format; auto measures the options on the first steps", lambda c: c.train.precision),
    )
    t.add_argument(
        "--channels-last",
        choices=["auto", "on", "off"],
        help=preset("memory layout; auto measures both on a CPU", lambda c: c.train.channels_last),
    )
    t.add_argument("--workers", type=int, help=preset("data loading workers", lambda c: c.train.num_workers))
    t.add_argument(
        "--time-budget",
        type=float,
        metavar="MINUTES",
        help="stop after this many minutes, keeping the best checkpoint (default: no limit; a --preset sets its own)",
    )
    t.add_argument("--time-limit", type=float, metavar="SECONDS", help="the same in seconds (its older name)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="per-class IoU, Dice and mIoU of a checkpoint on a dataset", **fmt)
    e.add_argument("checkpoint", help="a run folder (its best checkpoint) or a .safetensors file")
    e.add_argument("--data", default="builtin", help="builtin | a folder dataset | a .zip of one | oxford-pet[:ROOT]")
    e.add_argument("--split", choices=["val", "test", "train"], default="val", help="which part of the data")
    e.add_argument(
        "--classes",
        help="classes JSON for a folder dataset (default: the one the checkpoint was "
        "trained with, else the dataset's classes.json)",
    )
    e.add_argument(
        "--json",
        action="store_true",
        help="print miou, pixel_accuracy, per_class and the confusion (counts, row shares, most confused) as JSON",
    )
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("predict", help="write mask, colour mask and overlay PNGs for each image", **fmt)
    r.add_argument("checkpoint", help="a run folder (its best checkpoint) or a .safetensors file")
    r.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    r.add_argument(
        "--out", required=True, help="folder for NAME_mask.png (class ids), NAME_color.png and NAME_overlay.png"
    )
    r.add_argument("--alpha", type=float, default=0.5, help="overlay opacity, 0 to 1")
    r.add_argument(
        "--masks",
        nargs="+",
        metavar="DIR_OR_FILE",
        help="ground-truth masks (a folder, or files) paired with the images by file name (cat.png or "
        "cat_mask.png for cat.jpg): prints each image's mIoU and per-class IoU, Dice and mIoU over all",
    )
    r.set_defaults(func=cmd_predict)

    c = sub.add_parser("check", help="check a dataset folder or zip: pairs, sizes, labels, class shares", **fmt)
    c.add_argument("dir", help="a folder dataset (images/ + masks/, or train/ val/ test/) or a .zip of one")
    c.add_argument(
        "--classes", help="classes JSON (default: the dataset's classes.json, else classes found in the masks)"
    )
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=cmd_check)

    x = sub.add_parser(
        "export",
        help="write the model as ONNX or TorchScript, with meta.json and a predict script that needs no segdemo",
        **fmt,
    )
    x.add_argument("checkpoint", help="a run folder (its best checkpoint) or a .safetensors file")
    x.add_argument(
        "--format",
        choices=["onnx", "torchscript"],
        default="onnx",
        help="onnx (runs with onnxruntime; needs the onnx package to export) or torchscript (plain torch)",
    )
    x.add_argument(
        "--out",
        required=True,
        help="folder for model.onnx or model.torchscript.pt, meta.json and predict_onnx.py or predict_torchscript.py",
    )
    x.set_defaults(func=cmd_export)

    a = sub.add_parser("app", help="serve the web app (Train and Predict tabs) until Ctrl+C", **fmt)
    a.add_argument(
        "--host",
        help="address to listen on; 0.0.0.0 lets every machine that can reach this one use "
        "the app, with a warning (default: $GRADIO_SERVER_NAME, else 0.0.0.0 on a Hugging Face Space, "
        "else 127.0.0.1: this machine only)",
    )
    a.add_argument("--port", type=int, help="port to listen on (default: $PORT or $GRADIO_SERVER_PORT, else 7860)")
    a.add_argument(
        "--share",
        action="store_true",
        help="also open a public gradio.live link (needs internet), with a warning: anyone with the "
        "link can use the app",
    )
    a.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="train every run on this Ray cluster (ray://HEAD:10001), the app staying the front door: see the "
        "README's 'A workshop on a Ray cluster' (default: $SEGDEMO_RAY_ADDRESS, else runs train in this process)",
    )
    a.set_defaults(func=cmd_app)
    return p
