"""The training loop. It knows nothing of threads or browsers: it runs epochs, checks a stop flag
between batches, and hands each event to its callbacks."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from segdemo import budget
from segdemo import checkpoint as ckpt
from segdemo.config import RunConfig
from segdemo.data.base import IGNORE, ArraySource, CachedSource, DataError, PairSource, Splits
from segdemo.evaluate import evaluate_model, preview_indices
from segdemo.events import Done, EpochEnd, Event, Failed, Preview, Progress, Started
from segdemo.losses import SegLoss, class_weights_from_counts
from segdemo.model import PretrainedUnavailable, build_model, count_parameters
from segdemo.speedups import choose_speedups, pick_device, prepare_model
from segdemo.transforms import to_tensor, train_transform

log = logging.getLogger(__name__)
PREVIEW_MAX_SIDE = 256  # previews travel to browsers every epoch: keep them small
# torch's thread count is process-wide: runs that overlap in one server restore this, not each other's value
_PROCESS_THREADS = torch.get_num_threads()


OUT_OF_MEMORY = "ran out of memory in this epoch; choose a smaller batch size or image size and start again"


def is_out_of_memory(e: BaseException) -> bool:
    """torch.OutOfMemoryError on a GPU; on a CPU the allocator raises a plain RuntimeError that says so."""
    text = str(e)
    return isinstance(e, torch.OutOfMemoryError | MemoryError) or (
        isinstance(e, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text)
    )


class TrainDataset(Dataset):
    """Applies the train augmentation; returns uint8 HWC image and int64 mask (normalised later, per batch)."""

    def __init__(self, source: PairSource, cfg: RunConfig):
        self.source = source
        self.tf = train_transform(cfg.data)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        image, mask = self.source.load(i)
        out = self.tf(image=image, mask=mask)
        return torch.from_numpy(out["image"]), torch.from_numpy(out["mask"].astype(np.int64))


def lr_at(step: int, total: int, base_lr: float, schedule: str) -> float:
    """One-cycle: linear warm-up over the first 10% of steps, then cosine down to 1% of base_lr."""
    if schedule == "constant":
        return base_lr
    warm = max(1, int(0.1 * total))
    if step < warm:
        return base_lr * (0.1 + 0.9 * step / warm)
    t = min(1.0, (step - warm) / max(1, total - warm))
    return base_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def cpu_training_threads() -> int:
    """Leave one core free for data loading, the UI and everything else on the machine.

    A small U-Net gains little from the last core, but when another process wants it, every one of the
    hundreds of parallel ops per step waits for the thread that lost its core: on 2 busy cores a step
    measured 6-9x slower with 2 threads than with 1 (bench/README.md). OMP_NUM_THREADS, when set, wins.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return _PROCESS_THREADS
    return max(1, min(_PROCESS_THREADS, (os.cpu_count() or 1) - 1))


def warm_up(cfg: RunConfig | None = None) -> None:
    """Pay a first run's one-off costs ahead of time, so a server's first Train click starts at once:
    torch.optim's first optimiser imports torch._dynamo (1.5-3 s here), and the built-in data takes ~2 s
    to draw (then shared, read-only, by every run that asks for the same split). The app calls this in a
    background thread at start; it leaves torch's thread count alone."""
    from segdemo.config import quick_cpu_preset
    from segdemo.data.builtin import open_builtin

    cfg = cfg or quick_cpu_preset()
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    if cfg.data.source == "builtin":
        open_builtin(cfg.data)


def pixel_counts(source: PairSource, num_classes: int) -> np.ndarray:
    counts = np.zeros(num_classes, np.int64)
    for i in range(len(source)):
        m = source.load(i)[1]
        counts += np.bincount(m[m != IGNORE].ravel(), minlength=num_classes)[:num_classes]
    return counts


def _small(a: np.ndarray, nearest: bool) -> np.ndarray:
    """Shrink a preview so its longest side is at most PREVIEW_MAX_SIDE."""
    h, w = a.shape[:2]
    f = max(h, w) / PREVIEW_MAX_SIDE
    if f <= 1:
        return a
    import cv2

    return cv2.resize(a, (round(w / f), round(h / f)), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


class Trainer:
    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path,
        *,
        splits: Splits | None = None,
        should_stop: Callable[[], bool] | None = None,
        resume: bool = False,
        memory_budget: int | None = None,
    ):
        self.config = config
        self.run_dir = Path(run_dir)
        self.splits = splits
        self.should_stop = should_stop or (lambda: False)
        self.resume = resume
        self.memory_budget = memory_budget  # bytes a step may need (a server's share); None: this machine's
        self.callbacks: list[Callable[[Event], None]] = []

    def add_callback(self, fn: Callable[[Event], None]) -> None:
        self.callbacks.append(fn)

    def emit(self, event: Event) -> None:
        for fn in self.callbacks:
            fn(event)

    def run(self) -> Done | Failed:
        """Train to the end, a stop request or the time limit. Never raises for user-level problems."""
        try:
            return self._run()
        except (DataError, ValueError, PretrainedUnavailable, ckpt.CheckpointError, ckpt.CheckpointWriteError) as e:
            ev = Failed(str(e), f"{type(e).__name__}: {e}")
        except Exception as e:
            if is_out_of_memory(e):
                ev = Failed(OUT_OF_MEMORY, f"{type(e).__name__}: {e}")
            else:  # a bug: keep its traceback in the log and say so plainly rather than hang the job
                log.exception("training run in %s failed", self.run_dir)
                ev = Failed(f"training failed unexpectedly ({type(e).__name__}); the log has details",
                            f"{type(e).__name__}: {e}")
        finally:
            torch.set_num_threads(_PROCESS_THREADS)  # _run trains with one core left free
        self.emit(ev)
        return ev

    # -- the loop ---------------------------------------------------------------------------------

    def _run(self) -> Done:
        t_start = time.perf_counter()
        cfg = self.config
        cfg.validate()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.run_dir.glob(".*.tmp*"):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)
        _seed_everything(cfg.train.seed)
        if self.splits is None:
            from segdemo.data import open_dataset

            self.splits = open_dataset(cfg.data, self.run_dir)
        splits = self.splits
        classes = splits.classes
        if cfg.train.loss == "bce" and classes.num_classes != 2:
            raise ValueError(f"the bce loss is for two-class data; this data has {classes.num_classes} classes. "
                             "Choose ce, weighted_ce, dice or ce_dice")
        if len(splits.train) == 0 or len(splits.val) == 0:
            raise DataError("the dataset needs at least one training and one validation pair")
        cfg.model.num_classes = 1 if cfg.train.loss == "bce" else classes.num_classes
        mem = budget.check_training(cfg, self.memory_budget or budget.server_budget())
        if not isinstance(splits.train, ArraySource):  # decode files once, not every epoch, within the budget
            room = max(0, (self.memory_budget or budget.server_budget()) - mem)
            splits = replace(splits, train=CachedSource(splits.train, room * 3 // 4),
                             val=CachedSource(splits.val, room // 4))

        model = build_model(cfg.model)
        if pick_device(cfg.train.device).type == "cpu":
            torch.set_num_threads(cpu_training_threads())  # before the probe, so it measures what we run
        sp = choose_speedups(cfg.model, cfg.train, cfg.data.image_size)
        model = prepare_model(model, sp)
        # fused: one kernel for all parameters instead of ~10 small ops each; same maths, same state keys
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                fused=sp.device.type in ("cpu", "cuda"))
        weights = None
        if cfg.train.loss == "weighted_ce":
            weights = class_weights_from_counts(pixel_counts(splits.train, classes.num_classes)).to(sp.device)
        loss_fn = SegLoss(cfg.train.loss, weights).to(sp.device)
        scaler = torch.amp.GradScaler("cuda") if sp.use_grad_scaler else None

        bs = min(cfg.train.batch_size, len(splits.train))
        steps_per_epoch = len(splits.train) // bs  # drop_last keeps BatchNorm away from 1-image batches
        total_steps = steps_per_epoch * cfg.train.epochs
        state = {"epoch": 0, "step": 0, "best_miou": None, "best_epoch": None, "history": []}
        last_path, best_path = self.run_dir / "last.safetensors", self.run_dir / "best.safetensors"
        if self.resume:
            state = self._restore(last_path, model, opt, sp.device)
        _truncate_metrics_log(self.run_dir / "metrics.jsonl", state["epoch"])

        dataset = TrainDataset(splits.train, cfg)
        previews_at = preview_indices(len(splits.val), cfg.train.preview_images)
        self.emit(Started(str(self.run_dir), str(sp.device), sp.note, cfg.train.epochs, state["epoch"] + 1,
                          len(splits.train), len(splits.val), list(classes.names), list(classes.colors),
                          count_parameters(model)))
        reason = "finished"
        for epoch in range(state["epoch"] + 1, cfg.train.epochs + 1):
            t_epoch = time.perf_counter()
            dataset.tf.set_random_seed(cfg.train.seed * 100_003 + epoch)  # same augmentations on resume
            loader = DataLoader(dataset, batch_size=bs, shuffle=True, drop_last=True,
                                num_workers=cfg.train.num_workers,
                                generator=torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch))
            model.train()
            run_loss, n_seen, stopped = 0.0, 0, False
            for b, (images, masks) in enumerate(loader):
                if self._stop_requested(t_start):
                    stopped = True
                    break
                lr = lr_at(state["step"], total_steps, cfg.train.lr, cfg.train.schedule)
                for g in opt.param_groups:
                    g["lr"] = lr
                x = to_tensor(images.numpy(), cfg.data.mean, cfg.data.std).to(sp.device, non_blocking=True)
                if sp.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = masks.to(sp.device, non_blocking=True)
                with torch.autocast(sp.device.type, dtype=sp.autocast_dtype or torch.float32,
                                    enabled=sp.autocast_dtype is not None):
                    logits = model(x)
                loss = loss_fn(logits, y)
                if not torch.isfinite(loss):
                    raise ValueError(f"the loss became {float(loss)} at epoch {epoch}; the learning rate "
                                     f"{cfg.train.lr:g} is too high for this setup. Lower it and start again")
                opt.zero_grad(set_to_none=True)
                if scaler:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
                state["step"] += 1
                run_loss += loss.item() * len(images)
                n_seen += len(images)
                self.emit(Progress(epoch, b + 1, steps_per_epoch, run_loss / n_seen,
                                   n_seen / (time.perf_counter() - t_epoch)))
            if stopped:
                reason = "time_limit" if self._over_time(t_start) else "stopped"
                break
            train_seconds = time.perf_counter() - t_epoch
            res = evaluate_model(model, splits.val, cfg, classes, loss_fn, device=sp.device, batch_size=bs,
                                 preview_indices=previews_at, autocast_dtype=sp.autocast_dtype,
                                 channels_last=sp.channels_last)
            m = res.metrics
            is_best = state["best_miou"] is None or m.miou > state["best_miou"]
            state["epoch"] = epoch
            record = {"epoch": epoch, "train_loss": run_loss / max(n_seen, 1), "val_loss": res.loss,
                      "miou": m.miou, "pixel_accuracy": m.pixel_accuracy, "lr": lr,
                      "seconds": time.perf_counter() - t_epoch, "images_per_s": n_seen / train_seconds,
                      "per_class_iou": [None if math.isnan(v) else v for v in m.iou]}
            state["history"].append(record)
            metrics_doc = {"epoch": epoch, **m.to_dict(classes.names), "val_loss": res.loss}
            if is_best:
                state["best_miou"], state["best_epoch"] = m.miou, epoch
                ckpt.save_checkpoint(best_path, model, cfg, classes, metrics=metrics_doc)
            self._save_last(last_path, model, opt, cfg, classes, state, metrics_doc)
            _append_jsonl(self.run_dir / "metrics.jsonl", record)
            _draw_curves(self.run_dir / "curves.png", state["history"])
            self.emit(EpochEnd(
                epoch=epoch, epochs=cfg.train.epochs, train_loss=record["train_loss"], val_loss=res.loss,
                miou=m.miou, pixel_accuracy=m.pixel_accuracy, per_class_iou=record["per_class_iou"], lr=lr,
                seconds=record["seconds"], images_per_s=record["images_per_s"], is_best=is_best,
                previews=[Preview(n, _small(im, False), _small(t, True), _small(p, True))
                          for n, im, t, p in res.previews],
            ))
            if self._stop_requested(t_start):
                reason = "time_limit" if self._over_time(t_start) else "stopped"
                break
        done = Done(reason, state["epoch"], state["best_miou"], state["best_epoch"],
                    str(best_path) if best_path.exists() else None,
                    str(last_path) if last_path.exists() else None, time.perf_counter() - t_start)
        self.emit(done)
        return done

    def _over_time(self, t_start: float) -> bool:
        lim = self.config.train.time_limit_s
        return lim is not None and time.perf_counter() - t_start > lim

    def _stop_requested(self, t_start: float) -> bool:
        return self.should_stop() or self._over_time(t_start)

    # -- checkpoints ------------------------------------------------------------------------------

    def _save_last(self, path, model, opt, cfg, classes, state, metrics_doc) -> None:
        """Everything resume needs: weights, optimiser moments, step, RNG states, history."""
        extra, groups = {}, []
        params = [p for g in opt.param_groups for p in g["params"]]
        for i, p in enumerate(params):
            for k, v in opt.state.get(p, {}).items():
                extra[f"optim.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
        for g in opt.param_groups:
            groups.append({k: v for k, v in g.items() if k != "params"})
        extra["rng.torch"] = torch.get_rng_state()
        training_state = {**state, "param_groups": groups, "rng_numpy": _np_random_state(),
                          "rng_python": _py_random_state()}
        ckpt.save_checkpoint(path, model, cfg, classes, metrics=metrics_doc, training_state=training_state,
                             extra_tensors=extra)

    def _restore(self, path: Path, model, opt, device) -> dict:
        if not path.exists():
            raise ckpt.CheckpointError(f"nothing to resume: {path} does not exist")
        c = ckpt.load_checkpoint(path)
        ts = c.meta.get("training_state")
        if not ts:
            raise ckpt.CheckpointError(f"{path.name} has no training state to resume from")
        if c.config.model != self.config.model:
            raise ValueError("the run's saved model settings differ from these; resume with the same settings "
                             "or start a new run folder")
        model.load_state_dict(c.model.state_dict())
        params = [p for g in opt.param_groups for p in g["params"]]
        for i, p in enumerate(params):
            st = {k.split(".", 2)[2]: v.to(device) for k, v in c.extra.items() if k.startswith(f"optim.{i}.")}
            if st:
                if "step" in st:
                    st["step"] = st["step"].cpu()  # Adam keeps its step counter on the CPU
                opt.state[p] = st
        for g, saved in zip(opt.param_groups, ts["param_groups"], strict=True):
            g.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
        torch.set_rng_state(c.extra["rng.torch"])
        np.random.set_state(_np_random_from_json(ts["rng_numpy"]))
        random.setstate(_py_random_from_json(ts["rng_python"]))
        return {k: ts[k] for k in ("epoch", "step", "best_miou", "best_epoch", "history")}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _np_random_state():
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), pos, has_gauss, cached]


def _np_random_from_json(s):
    return (s[0], np.array(s[1], dtype=np.uint32), s[2], s[3], s[4])


def _py_random_state():
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _py_random_from_json(s):
    return (s[0], tuple(s[1]), s[2])


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def _truncate_metrics_log(path: Path, last_epoch: int) -> None:
    """On resume keep only epochs up to the checkpoint's: no duplicates, no gaps, no torn last line."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line torn by a crash mid-write
        if isinstance(rec, dict) and rec.get("epoch", 0) <= last_epoch and rec.get("epoch") not in \
                {r["epoch"] for r in keep}:
            keep.append(rec)
    ckpt.atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in keep).encode())


def _draw_curves(path: Path, history: list[dict]) -> None:
    from segdemo.viz import curves_figure

    png = io.BytesIO()
    curves_figure(history).savefig(png, format="png", dpi=80)
    ckpt.replace_file(path, png.getvalue(), fsync=False)  # a browser may be reading the old one
