"""The training loop. It knows nothing of threads or browsers: it runs epochs, checks a stop flag
between batches, and yields each event (Trainer.events) or hands it to callbacks (Trainer.run).

Read it top-down in Trainer: _loop (epochs), _setup (what a run builds), _train_epoch and _step (one
batch), _end_epoch (evaluate, checkpoint, log). A LoopState is what a checkpoint needs to go on exactly
where it stopped: after an epoch, or mid-epoch when a chunk of a longer run (ZeroGPU) used its steps.
Under torchrun each process trains on its share of every epoch and process 0 alone writes files."""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from segdemo.config import LITE, LITE_MEAN, LITE_STD, RunConfig
from segdemo.core import budget, speedups
from segdemo.core import checkpoint as ckpt
from segdemo.core.evaluate import evaluate_model, preview_indices
from segdemo.core.losses import WEIGHTED, SegLoss, class_weights_from_counts
from segdemo.core.metrics import metrics_from_confusion
from segdemo.core.model import build_model, count_parameters, encoder_parameters
from segdemo.core.speedups import Speedups, choose_speedups, pick_device, prepare_model
from segdemo.core.transforms import normalise, train_transform
from segdemo.data.base import IGNORE, ArraySource, CachedSource, ClassSet, DataError, PairSource, Splits
from segdemo.errors import ConfigError, UserError
from segdemo.events import Done, EpochEnd, Event, Failed, Preview, Progress, Started
from segdemo.training import distributed
from segdemo.training.distributed import World
from segdemo.training.instant import CACHE_BYTES, FeatureCache, decoder_logits

log = logging.getLogger(__name__)
PREVIEW_MAX_SIDE = 256  # previews travel to browsers every epoch: keep them small
WORST_IMAGES = 4  # lowest-scoring validation images each epoch event carries (none when previews are off)
# Fewer validation photos than this are too few to pick a checkpoint by alone: on one photo that lacks a class,
# a model that paints everything one class scores 1.0. Then a fixed sample of up to TRAIN_PROBE training photos
# is scored too (no augmentation) and the epoch kept is the one whose lower of the two mIoUs is highest.
SMALL_VAL = 30
TRAIN_PROBE = 32
# torch's thread count is process-wide: runs that overlap in one server restore this, not each other's value
_PROCESS_THREADS = speedups.PROCESS_THREADS
FIRST_EPOCH_GRACE_S = 120.0  # the most a time limit waits for a run's first epoch to end (see _over_time)


OUT_OF_MEMORY = "ran out of memory in this epoch; choose a smaller batch size or image size and start again"


def is_out_of_memory(e: BaseException) -> bool:
    """torch.OutOfMemoryError on a GPU; on a CPU the allocator raises a plain RuntimeError that says so."""
    text = str(e)
    return isinstance(e, torch.OutOfMemoryError | MemoryError) or (
        isinstance(e, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text)
    )


class TrainDataset(Dataset):
    """Applies the train augmentation; returns uint8 HWC image and int64 mask (normalised later, per batch).

    Each image's augmentation is seeded by (run seed, epoch, index): the same on resume, in any order, in
    any DataLoader worker (workers would otherwise each replay one shared random stream)."""

    def __init__(self, source: PairSource, cfg: RunConfig):
        self.source = source
        self.tf = train_transform(cfg.data)
        self.seed = cfg.train.seed
        self.epoch = 0  # set by the trainer before each epoch's loader starts

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        image, mask = self.source.load(i)
        self.tf.set_random_seed(((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i) % 2**32)
        out = self.tf(image=image, mask=mask)
        return torch.from_numpy(out["image"]), torch.from_numpy(out["mask"].astype(np.int64))


WARMUP = 0.1  # share of the run (steps or time, whichever is further along) spent warming the rate up
PLATEAU_PATIENCE, PLATEAU_FACTOR = 2, 0.5  # as torch's ReduceLROnPlateau(mode="max", patience=2, factor=0.5)


def schedule_progress(step: int, total_steps: int, elapsed_s: float, time_limit_s: float | None) -> float:
    """How far through its schedule a run is, 0..1: by steps, or by time when a time budget ends it first,
    so the learning rate reaches its end exactly at the budget (a preset's run) as well as at the last step."""
    by_steps = step / max(1, total_steps)
    return min(1.0, max(by_steps, elapsed_s / time_limit_s if time_limit_s else 0.0))


def lr_at(progress: float, base_lr: float, schedule: str, plateau_scale: float = 1.0) -> float:
    """The learning rate at `progress` (0..1) of the run.

    warmup_cosine: linear warm-up over the first 10%, then a cosine down to 1% of base_lr.
    plateau: the same warm-up, then base_lr times plateau_scale, which halves after 3 epochs without a
    better val mIoU (Trainer._plateau). constant: base_lr throughout.
    """
    if schedule == "constant":
        return base_lr
    if progress < WARMUP:
        return base_lr * (0.1 + 0.9 * progress / WARMUP)
    if schedule == "plateau":
        return base_lr * plateau_scale
    t = (progress - WARMUP) / (1 - WARMUP)
    return base_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def next_epoch_misses_budget(elapsed_s: float, epoch_s: float, time_limit_s: float | None) -> bool:
    """Would one more epoch as long as the last one end after the budget (and be cut off unevaluated)?"""
    return time_limit_s is not None and elapsed_s + epoch_s > time_limit_s


def _plateau(state: LoopState, improved: bool) -> None:
    """ReduceLROnPlateau on val mIoU, kept in the loop state so a resumed run goes on with it."""
    state.plateau_bad = 0 if improved else state.plateau_bad + 1
    if state.plateau_bad > PLATEAU_PATIENCE:
        state.plateau_scale *= PLATEAU_FACTOR
        state.plateau_bad = 0


BN_FROZEN_BELOW = 16  # batches smaller than this keep a pretrained encoder's BatchNorm statistics (measured:
# bench/README.md, "Fine-tuning the ImageNet encoder"); "train" or "frozen" in the config decides it by hand


def param_groups(net: torch.nn.Module, cfg: RunConfig) -> list[dict]:
    """Two groups when the encoder is pretrained, as fine-tuning codebases do: the encoder at encoder_lr times
    the rate (its ImageNet features need only nudging), the decoder at the rate itself; `lr_scale` is what
    the loop multiplies each step's rate by. A frozen encoder (instant mode) is not in the optimiser at all."""
    enc = encoder_parameters(net) if cfg.model.pretrained else set()
    decoder = [q for q in net.parameters() if id(q) not in enc]
    if not enc:
        return [{"params": decoder, "lr_scale": 1.0}]
    groups = [{"params": decoder, "lr_scale": 1.0}]
    if not cfg.train.freeze_encoder:
        groups.append({"params": [q for q in net.parameters() if id(q) in enc], "lr_scale": cfg.train.encoder_lr})
    return groups


def _encoder_training(net: torch.nn.Module, cfg: RunConfig) -> str:
    """Freeze what the config says of a pretrained encoder: all of it (instant mode) or its BatchNorm
    statistics ("auto": below BN_FROZEN_BELOW images a batch). Returns a note for the log."""
    if not hasattr(net, "frozen_bn") or not cfg.model.pretrained:
        return ""
    t = cfg.train
    if t.freeze_encoder:
        for q in net.encoder.parameters():
            q.requires_grad_(False)
    net.frozen_bn = (
        t.freeze_encoder or t.encoder_bn == "frozen" or (t.encoder_bn == "auto" and t.batch_size < BN_FROZEN_BELOW)
    )
    return "encoder frozen" if t.freeze_encoder else f"encoder BatchNorm {'frozen' if net.frozen_bn else 'trained'}"


INSTANT_STEPS = 16  # an instant-mode epoch has at least this many steps


def passes_per_epoch(cfg: RunConfig, n_train: int) -> int:
    """How many times an epoch goes through the training images: once, except in instant mode, whose steps
    are cheap (cached features, no augmentation) while each epoch's evaluation and checkpoints are not, so
    a handful of labelled photos would otherwise get one step between two evaluations."""
    if not cfg.train.freeze_encoder:
        return 1
    return max(1, math.ceil(INSTANT_STEPS * cfg.train.batch_size / max(1, n_train)))


def _comparable(m):
    """A model config as resume compares it: where the starting weights came from does not matter any more."""
    return replace(m, pretrained=False, weights=None, weights_from=None)


def cpu_training_threads(world: World | None = None) -> int:
    """Leave one core free for data loading, the UI and everything else on the machine (shared by the
    processes torchrun started on it).

    A small U-Net gains little from the last core, but when another process wants it, every one of the
    hundreds of parallel ops per step waits for the thread that lost its core: on 2 busy cores a step
    measured several times slower with 2 threads than with 1 (bench/README.md). OMP_NUM_THREADS, when set, wins.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return _PROCESS_THREADS
    here = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if world and world.distributed else 1
    return max(1, min(_PROCESS_THREADS, ((os.cpu_count() or 1) - 1) // here))


def warm_up(cfg: RunConfig | None = None) -> None:
    """Pay a first run's one-off costs ahead of time, so a server's first Train click starts at once:
    torch.optim's first optimiser imports torch._dynamo (seconds), and the built-in data takes a few seconds
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


@dataclass
class LoopState:
    """Where a run stands. The resumable checkpoint stores it, with the weights, optimiser and RNG states."""

    epoch: int = 0  # the last complete (trained and evaluated) epoch
    step: int = 0  # optimiser steps so far; the learning-rate schedule follows it
    batch: int = 0  # batches already trained of epoch `epoch + 1` when a chunk paused mid-epoch
    epoch_loss: float = 0.0  # that partial epoch's loss sum, images and seconds, so its record stays whole
    epoch_images: int = 0
    epoch_seconds: float = 0.0
    seconds: float = 0.0  # training time of the earlier sessions of this run (resume, chunks)
    best_miou: float | None = None
    best_epoch: int | None = None
    best_val_loss: float | None = None  # breaks a tie in val mIoU (scribbled labels: 1.0 from the first epoch)
    history: list[dict] = field(default_factory=list)
    precision: list | None = None  # [dtype name or None, channels_last] chosen at the start, kept on resume
    last_metrics: dict | None = None  # the newest epoch's validation metrics, saved beside every checkpoint
    plateau_scale: float = 1.0  # the "plateau" schedule's factor on the learning rate, and its count of
    plateau_bad: int = 0  # epochs since the best val mIoU
    best_score: float | None = None  # what the kept epoch won by (selection_words); None: best_miou's


def selection_words(n_val: int, small: bool) -> str:
    """How a run picks the checkpoint it keeps, in words for the page and the CLI."""
    if not small:
        return ""  # the plain rule: the highest validation mIoU
    return (
        f"only {n_val} validation photo{'s' if n_val != 1 else ''}: too few to judge a model alone, so the "
        "checkpoint kept is the epoch whose lower of validation mIoU and training-photo mIoU is highest "
        "(a model that paints everything one class cannot win it)"
    )


def source_name(source: str) -> str:
    """A data source as a checkpoint's card names it: no server paths, only the data's own name."""
    if source == "builtin" or source.startswith("oxford-pet"):
        return source.split(":")[0]
    return Path(source).name


def probe_indices(n: int, k: int = TRAIN_PROBE) -> list[int]:
    """Up to k indices spread evenly over 0..n-1: the training photos a small-split run also scores."""
    m = min(n, k)
    return sorted({round(i * (n - 1) / max(1, m - 1)) for i in range(m)})


@dataclass
class Parts:
    """What setting up a run builds; the loop only reads it."""

    cfg: RunConfig
    splits: Splits
    classes: ClassSet
    model: torch.nn.Module  # what trains (wrapped in DistributedDataParallel under torchrun)
    net: torch.nn.Module  # the plain U-Net inside it: what checkpoints save and evaluation runs
    opt: torch.optim.Optimizer
    loss_fn: SegLoss
    scaler: torch.amp.GradScaler | None
    sp: Speedups
    world: World
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    dataset: TrainDataset
    previews_at: list[int]
    cache: FeatureCache | None = None  # instant mode: the frozen encoder's features of the training images
    train_probe: list[int] = field(default_factory=list)  # scored each epoch when the val split is small
    selection: str = ""
    trained_on: dict = field(default_factory=dict)  # what the checkpoints say the model learnt from (its card)


@dataclass
class EpochTrain:
    loss_sum: float
    images: int
    seconds: float
    lr: float
    stopped: bool = False  # a Stop or the time limit came first
    paused: bool = False  # the chunk's step budget ran out mid-epoch
    steps: int = 0  # optimiser steps taken in this session of the epoch


class Trainer:
    """Train a run to its end, a Stop, the time limit or (for chunked training) `max_steps` steps.

    `events()` yields what happens (Started, Progress, EpochEnd, then Done or Failed); `run()` hands each
    to the callbacks and returns the last. The caller's config is copied, never changed."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path,
        *,
        splits: Splits | None = None,
        should_stop: Callable[[], bool] | None = None,
        resume: bool = False,
        memory_budget: int | None = None,
        max_steps: int | None = None,
        should_pause: Callable[[], bool] | None = None,
    ):
        self.config = copy.deepcopy(config)
        self.run_dir = Path(run_dir)
        self.splits = splits
        self.should_stop = should_stop or (lambda: False)
        self.resume = resume
        self.memory_budget = memory_budget  # bytes a step may need (a server's share); None: this machine's
        self._holds_threads = False  # set while this run holds torch's thread count (speedups)
        self._epochs_ended = 0  # in this session of the run (a resumed run has its checkpoint already)
        self.max_steps = max_steps  # a chunk of a longer run: pause (resumably) after this many steps
        self.should_pause = should_pause or (lambda: False)  # e.g. a server's fair share: others are waiting
        self.callbacks: list[Callable[[Event], None]] = []
        self.last_path = self.run_dir / "last.safetensors"
        self.best_path = self.run_dir / "best.safetensors"

    def add_callback(self, fn: Callable[[Event], None]) -> None:
        self.callbacks.append(fn)

    def run(self) -> Done | Failed:
        """Train; never raises for user-level problems. Returns the final event."""
        final = None
        for final in self.events():
            for fn in self.callbacks:
                fn(final)
        return final

    def events(self) -> Iterator[Event]:
        """Every event of the run, ending with Done or Failed."""
        try:
            yield from self._loop()
            return
        except UserError as e:  # the user's to fix: their sentence, no traceback
            log.info("training run in %s refused: %s", self.run_dir, e)
            ev = Failed(message=str(e), detail=f"{type(e).__name__}: {e}")
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise  # Ctrl-C at the CLI, an exiting interpreter, a closed generator: not a failed run
        except BaseException as e:  # Exception, and pyo3's PanicException (safetensors under memory pressure)
            if is_out_of_memory(e):
                log.warning("training run in %s ran out of memory", self.run_dir, exc_info=True)
                ev = Failed(message=OUT_OF_MEMORY, detail=f"{type(e).__name__}: {e}")
            else:  # a bug: keep its traceback in the log and say so plainly rather than hang the job
                log.exception("training run in %s failed", self.run_dir)
                ev = Failed(
                    message=f"training failed unexpectedly ({type(e).__name__}); the log has details",
                    detail=f"{type(e).__name__}: {e}",
                )
        finally:
            if self._holds_threads:  # the last training to end gives torch its thread count back
                speedups.release_training_threads()
                self._holds_threads = False
        yield ev

    # -- the loop ---------------------------------------------------------------------------------

    def _loop(self) -> Iterator[Event]:
        t_start = time.perf_counter()
        p, state = self._setup()
        self.t_start, self.seconds_before = t_start, state.seconds
        yield Started(
            run_dir=str(self.run_dir),
            device=str(p.sp.device),
            precision=p.sp.note,
            epochs=p.cfg.train.epochs,
            start_epoch=state.epoch + 1,
            n_train=len(p.splits.train),
            n_val=len(p.splits.val),
            class_names=list(p.classes.names),
            class_colors=list(p.classes.colors),
            parameters=count_parameters(p.net),
            notes=list(p.splits.notes),
            warnings=list(p.splits.warnings),
            selection=p.selection,
        )
        reason, steps_left = "finished", self.max_steps
        for epoch in range(state.epoch + 1, p.cfg.train.epochs + 1):
            train = yield from self._train_epoch(p, state, epoch, steps_left)
            if steps_left is not None:
                steps_left -= train.steps
            if train.stopped:
                reason = "time_limit" if self._over_time() else "stopped"
                break
            if train.paused:
                self._save_last(p, state)  # mid-epoch: the next chunk goes on from here
                reason = "paused"
                break
            end = self._end_epoch(p, state, epoch, train)
            self._epochs_ended += 1
            yield end
            if self._stop_everywhere(p):
                reason = "time_limit" if self._over_time() else "stopped"
                break
            if epoch < p.cfg.train.epochs and self._next_epoch_misses_the_budget(p, end):
                reason = "time_limit"  # stopping now keeps the whole last epoch; its rate had nearly decayed
                break
            if epoch < p.cfg.train.epochs and ((steps_left is not None and steps_left <= 0) or self.should_pause()):
                reason = "paused"
                break
        distributed.barrier(p.world)  # no process leaves while process 0 still writes
        yield Done(
            reason=reason,
            epochs_done=state.epoch,
            best_miou=state.best_miou,
            best_epoch=state.best_epoch,
            best_checkpoint=str(self.best_path) if self.best_path.exists() else None,
            last_checkpoint=str(self.last_path) if self.last_path.exists() else None,
            seconds=time.perf_counter() - t_start,
            selection=p.selection,
        )

    def _setup(self) -> tuple[Parts, LoopState]:
        """Check the settings against the data and the memory budget, then build model, optimiser and loss."""
        cfg, world = self.config, distributed.current()
        cfg.validate()
        if cfg.model.encoder == LITE:  # the normalisation its ImageNet weights expect, kept in every checkpoint
            cfg.data.mean, cfg.data.std = LITE_MEAN, LITE_STD
        if world.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.run_dir.glob(".*.tmp*"):  # left by a process killed mid-write
                stale.unlink(missing_ok=True)
        _seed_everything(cfg.train.seed)
        if self.splits is None:
            from segdemo.data import open_dataset

            self.splits = open_dataset(cfg.data, self.run_dir)
        splits, classes = self.splits, self.splits.classes
        if cfg.train.loss == "bce" and classes.num_classes != 2:
            raise ConfigError(
                f"the bce loss is for two-class data; this data has {classes.num_classes} classes. "
                "Choose ce, weighted_ce, dice, ce_dice or weighted_ce_dice"
            )
        if len(splits.train) == 0 or len(splits.val) == 0:
            raise DataError("the dataset needs at least one training and one validation pair")
        cfg.model.num_classes = 1 if cfg.train.loss == "bce" else classes.num_classes
        mem = budget.check_training(cfg, self.memory_budget or budget.server_budget())
        room, feature_room = max(0, (self.memory_budget or budget.server_budget()) - mem), 0
        if cfg.train.freeze_encoder:  # instant mode: half the room for features, the same crop every epoch
            cfg.data.augment = False
            if world.distributed:
                raise ConfigError("instant mode (a frozen encoder) trains in one process; run it without torchrun")
            room, feature_room = room // 2, room // 2
        if not isinstance(splits.train, ArraySource):  # decode files once, not every epoch, within the budget
            splits = replace(
                splits, train=CachedSource(splits.train, room * 3 // 4), val=CachedSource(splits.val, room // 4)
            )

        state = self._read_state() if self.resume else LoopState()
        if self.resume:  # the weights come from the run's checkpoint: no download, no wheel needed
            cfg.model.weights_from = self._resume_from.config.model.weights_from
            net = build_model(replace(cfg.model, pretrained=False, weights=None))
        else:
            if cfg.model.encoder == LITE and cfg.model.pretrained:
                from segdemo.core.pretrained import provenance

                cfg.model.weights_from = provenance()
            net = build_model(cfg.model)  # the same seed everywhere: every process starts from the same weights
        bn_note = _encoder_training(net, cfg)
        if bn_note:
            log.info("%s: %s", cfg.model.encoder, bn_note)
        device = pick_device(cfg.train.device)
        if device.type == "cpu" and not self._holds_threads:  # before the probe, so it measures what we run
            speedups.hold_training_threads(cpu_training_threads(world))
            self._holds_threads = True
        sp = self._speedups(cfg, state, world)
        if world.distributed and sp.device.type == "cuda":
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)  # a few images per GPU: share BN statistics
        net = prepare_model(net, sp)
        if sp.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick its fastest kernels once
        # fused: one kernel for all parameters instead of ~10 small ops each; same maths, same state keys
        opt = torch.optim.AdamW(
            param_groups(net, cfg),
            lr=cfg.train.lr,
            weight_decay=cfg.train.weight_decay,
            fused=sp.device.type in ("cpu", "cuda"),
        )
        if self.resume:
            self._restore(net, opt, sp.device)
        model = net
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(net, device_ids=[sp.device.index] if sp.device.type == "cuda" else None)
        weights = None
        if cfg.train.loss in WEIGHTED:
            weights = class_weights_from_counts(pixel_counts(splits.train, classes.num_classes)).to(sp.device)
        loss_fn = SegLoss(cfg.train.loss, weights).to(sp.device)
        scaler = torch.amp.GradScaler("cuda") if sp.use_grad_scaler else None

        bs = min(cfg.train.batch_size, max(1, len(splits.train) // world.size))
        # drop_last keeps BatchNorm away from 1-image batches; each process sees 1/world of the images
        steps_per_epoch = max(
            1, math.ceil(len(splits.train) / world.size) * passes_per_epoch(cfg, len(splits.train)) // bs
        )
        if world.is_main:
            _truncate_metrics_log(self.run_dir / "metrics.jsonl", state.epoch)
        p = Parts(
            cfg,
            splits,
            classes,
            model,
            net,
            opt,
            loss_fn,
            scaler,
            sp,
            world,
            bs,
            steps_per_epoch,
            steps_per_epoch * cfg.train.epochs,
            TrainDataset(splits.train, cfg),
            preview_indices(len(splits.val), cfg.train.preview_images),
            FeatureCache(min(CACHE_BYTES, feature_room)) if cfg.train.freeze_encoder else None,
        )
        small = len(splits.val) < SMALL_VAL
        p.train_probe = probe_indices(len(splits.train)) if small else []
        p.selection = selection_words(len(splits.val), small)
        if world.is_main:
            from segdemo.training.familiar import training_stats

            p.trained_on = {
                "description": splits.description or cfg.data.source,
                "source": source_name(cfg.data.source),
                "train_images": len(splits.train),
                "val_images": len(splits.val),
                "images": training_stats(splits.train),
            }
        if state.best_score is None:
            state.best_score = state.best_miou  # resumed from a run that kept its best by val mIoU alone
        return p, state

    def _speedups(self, cfg: RunConfig, state: LoopState, world: World) -> Speedups:
        """Measure (or take what the run measured when it began: a resumed run keeps its precision, so a run
        in chunks computes what one run would); every process uses process 0's choice."""
        if state.precision is None:
            sp = choose_speedups(cfg.model, cfg.train, cfg.data.crop)
            state.precision = [None if sp.autocast_dtype is None else str(sp.autocast_dtype)[6:], sp.channels_last]
        else:
            dtype, cl = state.precision
            sp = Speedups(
                pick_device(cfg.train.device),
                None if dtype is None else getattr(torch, dtype),
                bool(cl),
                f"{dtype or 'fp32'}{' + channels_last' if cl else ''} (kept from the run's start)",
            )
        return distributed.from_main(sp, world)

    def _loader(self, p: Parts, epoch: int, skip_batches: int) -> DataLoader:
        """This process's batches of `epoch`, in the same order on every resume: the shuffle is seeded by the
        epoch, augmentations by (epoch, image), so a run paused after `skip_batches` goes on exactly."""
        p.dataset.epoch = epoch
        sampler = DistributedSampler(
            p.dataset, num_replicas=p.world.size, rank=p.world.rank, shuffle=True, seed=p.cfg.train.seed * 1_000_003
        )
        sampler.set_epoch(epoch)
        order = (list(sampler) * passes_per_epoch(p.cfg, len(p.dataset)))[skip_batches * p.batch_size :]
        self._order = order  # which images each batch holds (instant mode looks their features up by index)
        return DataLoader(
            p.dataset,
            batch_size=p.batch_size,
            sampler=order,
            drop_last=True,
            num_workers=p.cfg.train.num_workers,
            pin_memory=p.sp.device.type == "cuda",
        )

    def _train_epoch(self, p: Parts, state: LoopState, epoch: int, steps_left: int | None):
        """Train one epoch (or its rest, after a pause), yielding Progress; returns an EpochTrain."""
        t0 = time.perf_counter()
        done_before, out = (
            state.batch,
            EpochTrain(state.epoch_loss, state.epoch_images, state.epoch_seconds, p.opt.param_groups[0]["lr"]),
        )
        p.model.train()
        for b, (images, masks) in enumerate(self._loader(p, epoch, done_before), start=done_before):
            if self._stop_everywhere(p):
                out.stopped = True
                break
            if (steps_left is not None and out.steps >= steps_left) or (out.steps and self.should_pause()):
                out.paused = True
                break
            t = p.cfg.train
            # a time budget ends the schedule by the clock (each process's own: they start together, and
            # under torchrun a rate a few milliseconds apart does no harm)
            budget = t.time_limit_s if t.lr_follows_time else None
            progress = schedule_progress(state.step, p.total_steps, self._elapsed(), budget)
            out.lr = lr_at(progress, t.lr, t.schedule, state.plateau_scale)
            at = (b - done_before) * p.batch_size
            loss = self._step(p, images, masks, out.lr, epoch, self._order[at : at + len(images)])
            state.step += 1
            out.steps += 1
            out.loss_sum += loss * len(images)
            out.images += len(images)
            seconds = out.seconds + time.perf_counter() - t0
            state.batch, state.epoch_loss, state.epoch_images, state.epoch_seconds = (
                b + 1,
                out.loss_sum,
                out.images,
                seconds,
            )
            yield Progress(
                epoch=epoch,
                batch=b + 1,
                n_batches=p.steps_per_epoch,
                loss=out.loss_sum / out.images,
                images_per_s=out.images / seconds,
            )
        out.seconds += time.perf_counter() - t0
        return out

    def _step(
        self, p: Parts, images: torch.Tensor, masks: torch.Tensor, lr: float, epoch: int, indices: list[int]
    ) -> float:
        """One optimiser step on one batch (these dataset images); returns the batch's loss."""
        for g in p.opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        x = normalise(images.to(p.sp.device, non_blocking=True), p.cfg.data.mean, p.cfg.data.std)
        if p.sp.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = masks.to(p.sp.device, non_blocking=True)
        m = p.cfg.model
        if x.shape[0] == 1 and min(x.shape[-2:]) < 2 * (2**m.depth if m.encoder == "unet" else 32):
            # BatchNorm needs more than one value per channel: a lone small image (one training photo) whose
            # deepest map is 1x1 goes in twice, which leaves its loss and gradient as they are
            x, y, indices = torch.cat([x, x]), torch.cat([y, y]), [*indices, *indices]
        with torch.autocast(
            p.sp.device.type, dtype=p.sp.autocast_dtype or torch.float32, enabled=p.sp.autocast_dtype is not None
        ):
            logits = p.model(x) if p.cache is None else decoder_logits(p.net, p.cache, x, indices)
        loss = p.loss_fn(logits, y)
        if not torch.isfinite(loss):
            raise ConfigError(
                f"the loss became {float(loss)} at epoch {epoch}; the learning rate "
                f"{p.cfg.train.lr:g} is too high for this setup. Lower it and start again"
            )
        p.opt.zero_grad(set_to_none=True)
        if p.scaler:
            p.scaler.scale(loss).backward()
            p.scaler.step(p.opt)
            p.scaler.update()
        else:
            loss.backward()
            p.opt.step()
        return loss.item()

    def _end_epoch(self, p: Parts, state: LoopState, epoch: int, train: EpochTrain) -> EpochEnd:
        """Evaluate on the whole validation split, keep the best and the last checkpoint, log the epoch."""
        w, dev, t_eval = p.world, p.sp.device, time.perf_counter()
        share = list(range(w.rank, len(p.splits.val), w.size)) if w.distributed else None
        distributed.share_buffers(p.net, w)
        res = evaluate_model(
            p.net,
            p.splits.val,
            p.cfg,
            p.classes,
            p.loss_fn,
            device=dev,
            batch_size=p.batch_size,
            preview_indices=p.previews_at if w.is_main else [],
            autocast_dtype=p.sp.autocast_dtype,
            channels_last=p.sp.channels_last,
            indices=share,
            # one process sees only its share of the images, so only a single process picks the worst
            worst=WORST_IMAGES if p.cfg.train.preview_images > 0 and not w.distributed else 0,
        )
        # every process computes the same metrics from the summed counts
        cm = distributed.sum_all(res.confusion, w, dev)
        sums = distributed.sum_all(
            torch.tensor([res.loss_sum, res.loss_count, train.loss_sum, train.images], dtype=torch.float64), w, dev
        ).tolist()
        m = metrics_from_confusion(cm)
        val_loss, train_loss = sums[0] / max(sums[1], 1), sums[2] / max(sums[3], 1)
        train_miou = self._probe_train(p)
        score = m.miou if train_miou is None else min(m.miou, train_miou)
        # a tie goes to the lower val loss: a few scribbled validation pixels are all right after one epoch, and
        # the kept epoch must not stay there while the net goes on learning the rest of each photo
        is_best = (
            state.best_score is None
            or score > state.best_score
            or (score == state.best_score and val_loss < (state.best_val_loss or math.inf))
        )
        state.epoch, state.batch, state.epoch_loss, state.epoch_images, state.epoch_seconds = epoch, 0, 0.0, 0, 0.0
        seconds = train.seconds + time.perf_counter() - t_eval
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "miou": m.miou,
            "pixel_accuracy": m.pixel_accuracy,
            "lr": train.lr,
            "seconds": seconds,
            "images_per_s": sums[3] / max(train.seconds, 1e-9),
            "per_class_iou": [None if math.isnan(v) else v for v in m.iou],
            "val_images": len(p.splits.val),
            "val_pixels": int(cm.sum()),
            "train_miou": train_miou,
            "score": score,
            "is_best": is_best,
        }
        state.history.append(record)
        if is_best:
            state.best_miou, state.best_epoch, state.best_score = m.miou, epoch, score
            state.best_val_loss = val_loss
        if p.cfg.train.schedule == "plateau":
            _plateau(state, is_best)
        state.last_metrics = {
            "epoch": epoch,
            **m.to_dict(p.classes.names),
            "val_loss": val_loss,
            "val_images": len(p.splits.val),
            "val_pixels": int(cm.sum()),
            "train_miou": train_miou,
            "score": score,
            "selection": p.selection,
        }
        if w.is_main:
            if is_best:
                ckpt.save_checkpoint(
                    self.best_path, p.net, p.cfg, p.classes, metrics=state.last_metrics, trained_on=p.trained_on
                )
            self._save_last(p, state)
            _append_jsonl(self.run_dir / "metrics.jsonl", record)
            _draw_curves(self.run_dir / "curves.png", state.history)
        log.info(
            "epoch %d/%d: train loss %.4f, val loss %.4f, mIoU %.4f",
            epoch,
            p.cfg.train.epochs,
            train_loss,
            val_loss,
            m.miou,
        )
        return EpochEnd(
            epoch=epoch,
            epochs=p.cfg.train.epochs,
            train_loss=train_loss,
            val_loss=val_loss,
            miou=m.miou,
            pixel_accuracy=m.pixel_accuracy,
            per_class_iou=record["per_class_iou"],
            lr=train.lr,
            seconds=record["seconds"],
            images_per_s=record["images_per_s"],
            is_best=is_best,
            previews=[
                Preview(name=n, image=_small(im, False), target=_small(t, True), pred=_small(pr, True))
                for n, im, t, pr in res.previews
            ],
            confusion=cm.numpy(),
            worst=[
                Preview(
                    name=r.name,
                    image=_small(r.image, False),
                    target=_small(r.target, True),
                    pred=_small(r.pred, True),
                    miou=r.miou,
                )
                for r in res.worst
            ],
            val_images=len(p.splits.val),
            val_pixels=int(cm.sum()),
            train_miou=train_miou,
            score=score,
        )

    def _probe_train(self, p: Parts) -> float | None:
        """A small validation split's second signal: the mIoU of the fixed training-photo sample (eval mode,
        no augmentation), its counts summed over processes like the validation's. None on a large split."""
        if not p.train_probe:
            return None
        w = p.world
        res = evaluate_model(
            p.net,
            p.splits.train,
            p.cfg,
            p.classes,
            device=p.sp.device,
            batch_size=p.batch_size,
            autocast_dtype=p.sp.autocast_dtype,
            channels_last=p.sp.channels_last,
            indices=p.train_probe[w.rank :: w.size] if w.distributed else p.train_probe,
        )
        return metrics_from_confusion(distributed.sum_all(res.confusion, w, p.sp.device)).miou

    def _elapsed(self) -> float:
        return self.seconds_before + time.perf_counter() - self.t_start

    def _over_time(self) -> bool:
        """Past the time limit; before the run's first epoch has ended, past it by FIRST_EPOCH_GRACE_S: a budget
        run on a busy machine still ends with a checkpoint, not with none."""
        lim = self.config.train.time_limit_s
        if lim is None:
            return False
        if self._epochs_ended == 0 and not self.resume:
            lim += FIRST_EPOCH_GRACE_S
        return self._elapsed() > lim

    def _next_epoch_misses_the_budget(self, p: Parts, end: EpochEnd) -> bool:
        """With a time budget, another epoch as long as this one would be cut off before its evaluation."""
        late = next_epoch_misses_budget(self._elapsed(), end.seconds, self.config.train.time_limit_s)
        return distributed.any_of(late, p.world, p.sp.device)

    def _stop_everywhere(self, p: Parts) -> bool:
        return distributed.any_of(self.should_stop() or self._over_time(), p.world, p.sp.device)

    # -- checkpoints ------------------------------------------------------------------------------

    def _save_last(self, p: Parts, state: LoopState) -> None:
        """Everything resume needs: weights, optimiser moments, loop state, RNG states. Process 0 only."""
        if not p.world.is_main:
            return
        state.seconds = self._elapsed()
        extra, groups = {}, []
        params = [q for g in p.opt.param_groups for q in g["params"]]
        for i, q in enumerate(params):
            for k, v in p.opt.state.get(q, {}).items():
                extra[f"optim.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
        for g in p.opt.param_groups:
            groups.append({k: v for k, v in g.items() if k != "params"})
        extra["rng.torch"] = torch.get_rng_state()
        training_state = {
            **asdict(state),
            "param_groups": groups,
            "rng_numpy": _np_random_state(),
            "rng_python": _py_random_state(),
        }
        ckpt.save_checkpoint(
            self.last_path,
            p.net,
            p.cfg,
            p.classes,
            metrics=state.last_metrics,
            training_state=training_state,
            extra_tensors=extra,
            trained_on=p.trained_on,
        )

    def _read_state(self) -> LoopState:
        if not self.last_path.exists():
            raise ckpt.CheckpointError(f"nothing to resume: {self.last_path} does not exist")
        self._resume_from = ckpt.load_checkpoint(self.last_path)
        ts = self._resume_from.meta.get("training_state")
        if not ts:
            raise ckpt.CheckpointError(f"{self.last_path.name} has no training state to resume from")
        if _comparable(self._resume_from.config.model) != _comparable(self.config.model):
            raise ConfigError(
                "the run's saved model settings differ from these; resume with the same settings "
                "or start a new run folder"
            )
        known = {f.name for f in fields(LoopState)}
        return LoopState(**{k: v for k, v in ts.items() if k in known})

    def _restore(self, net, opt, device) -> None:
        c, ts = self._resume_from, self._resume_from.meta["training_state"]
        net.load_state_dict(c.model.state_dict())
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
        self._resume_from = None


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
        except json.JSONDecodeError:
            continue  # a line torn by a crash mid-write
        if (
            isinstance(rec, dict)
            and rec.get("epoch", 0) <= last_epoch
            and rec.get("epoch") not in {r["epoch"] for r in keep}
        ):
            keep.append(rec)
    ckpt.atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in keep).encode())


def _draw_curves(path: Path, history: list[dict]) -> None:
    from segdemo.core.viz import curves_figure

    png = io.BytesIO()
    curves_figure(history).savefig(png, format="png", dpi=80)
    ckpt.replace_file(path, png.getvalue(), fsync=False)  # a browser may be reading the old one
