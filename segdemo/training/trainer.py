"""The training loop. It knows nothing of threads or browsers: it runs epochs, checks a stop flag
between batches, and yields each event (Trainer.events) or hands it to callbacks (Trainer.run).

Read it top-down in Trainer: _loop (epochs), _setup (what a run builds, in numbered steps), _train_epoch
(one epoch's batches, each a step.train_step), _end_epoch (evaluate, checkpoint, log). Its helpers have a
module each under segdemo/training/: schedule (the learning rate), resume (LoopState and the resumable
checkpoint), batches (the data and its augmented batches), finetune (a pretrained encoder), selection (which
epoch is kept), report (each epoch's record and event), parts, step, failures, card, host. A run may train in
several turns, each a Trainer resuming where the last paused: segdemo/training/turns.py makes them one run.
Under torchrun each process trains on its share of every epoch and process 0 alone writes files."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import replace
from pathlib import Path

import torch

from segdemo.core import checkpoint as ckpt
from segdemo.core import speedups
from segdemo.core.config import RunConfig
from segdemo.core.encoders import ENCODERS, build_model
from segdemo.core.evaluate import preview_indices
from segdemo.core.losses import WEIGHTED, SegLoss, class_weights_from_counts
from segdemo.core.model import count_parameters
from segdemo.core.speedups import Speedups, pick_device, prepare_model
from segdemo.data.base import Splits
from segdemo.events import Done, EpochEnd, Event, Failed, Progress, Started
from segdemo.training import card, distributed, report, resume
from segdemo.training.batches import TrainDataset, epoch_loader, fit_splits, pixel_counts, steps_per_epoch
from segdemo.training.distributed import World
from segdemo.training.failures import failure
from segdemo.training.finetune import encoder_training, optimiser
from segdemo.training.host import cpu_training_threads, warm_up  # noqa: F401 - warm_up: the app imports it here
from segdemo.training.instant import CACHE_BYTES, FeatureCache
from segdemo.training.parts import EpochTrain, Parts
from segdemo.training.resume import LoopState
from segdemo.training.schedule import lr_at, next_epoch_misses_budget, plateau_step, schedule_progress
from segdemo.training.selection import SMALL_VAL, beats_kept, probe_indices, selection_words
from segdemo.training.step import train_step

log = logging.getLogger(__name__)
FIRST_EPOCH_GRACE_S = 120.0  # the most a time limit waits for a run's first epoch to end (see _over_time)


class Trainer:
    """Train a run to its end, a Stop, the time limit or the end of its turn (`max_steps` steps, or
    `should_pause()` between batches): then Done("paused") and a resumable checkpoint.

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
    ) -> None:
        self.config = copy.deepcopy(config)
        self.run_dir = Path(run_dir)
        self.splits = splits
        self.should_stop = should_stop or (lambda: False)
        self.resume = resume
        self.memory_budget = memory_budget  # bytes a step may need (a server's share); None: this machine's
        self._holds_threads = False  # set while this run holds torch's thread count (speedups)
        self._epochs_ended = 0  # in this session of the run (a resumed run has its checkpoint already)
        self.max_steps = max_steps  # a turn of a longer run: pause (resumably) after this many steps
        self.should_pause = should_pause or (lambda: False)  # e.g. a server's fair share: others are waiting
        self.callbacks: list[Callable[[Event], None]] = []
        self.last_path = self.run_dir / "last.safetensors"
        self.best_path = self.run_dir / "best.safetensors"
        self._order: list[int] = []  # the images of the current epoch's batches, in order

    def add_callback(self, fn: Callable[[Event], None]) -> None:
        self.callbacks.append(fn)

    def run(self) -> Done | Failed:
        """Train; never raises for user-level problems. Returns the final event."""
        final = None
        for final in self.events():
            for fn in self.callbacks:
                fn(final)
        assert isinstance(final, Done | Failed)  # events() always ends with one
        return final

    def events(self) -> Iterator[Event]:
        """Every event of the run, ending with Done or Failed."""
        try:
            yield from self._loop()
            return
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise  # Ctrl-C at the CLI, an exiting interpreter, a closed generator: not a failed run
        except BaseException as e:  # Exception, and pyo3's PanicException (safetensors under memory pressure)
            ev = failure(e, self.run_dir)
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
            train = yield from self._train_epoch(p, state, epoch=epoch, steps_left=steps_left)
            if steps_left is not None:
                steps_left -= train.steps
            if train.stopped:
                reason = "time_limit" if self._over_time() else "stopped"
                break
            if train.paused:
                self._save_last(p, state)  # mid-epoch: the next turn goes on from here
                reason = "paused"
                break
            end = self._end_epoch(p, state, epoch=epoch, train=train)
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
        """What a run builds, step by step, in this order: a resumed run's random streams depend on it."""
        cfg, world = self.config, distributed.current()
        # 1. Settings and run folder: checked, seeded, a killed process's temporaries removed
        self._prepare(cfg, world)
        # 2. Data: opened, checked against the loss, decoded once within the memory budget
        if self.splits is None:
            from segdemo.data import open_dataset

            self.splits = open_dataset(cfg.data, self.run_dir)
        splits, feature_room = fit_splits(self.splits, cfg, world=world, memory_budget=self.memory_budget)
        classes = splits.classes
        # 3. Where the run stands: a new LoopState, or the one in the run's resumable checkpoint
        state, saved = resume.read_state(self.last_path, cfg) if self.resume else (LoopState(), None)
        # 4. Model, on its device, at the precision measured at the run's start
        net, sp = self._model(cfg, state=state, world=world, saved=saved)
        # 5. Optimiser (its moments and the RNG states restored on resume), loss, gradient scaler
        opt = optimiser(net, cfg, sp.device)
        if saved is not None:
            resume.restore(saved, net=net, opt=opt, device=sp.device)
        model = net
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(net, device_ids=[sp.device.index] if sp.device.type == "cuda" else None)
        weights = None
        if cfg.train.loss in WEIGHTED:
            weights = class_weights_from_counts(pixel_counts(splits.train, classes.num_classes)).to(sp.device)
        loss_fn = SegLoss(cfg.train.loss, weights).to(sp.device)
        scaler = torch.amp.GradScaler("cuda") if sp.use_grad_scaler else None
        # 6. Batches: their size, an epoch's steps; the metrics log cut back to the checkpoint's epoch
        bs = min(cfg.train.batch_size, max(1, len(splits.train) // world.size))
        steps = steps_per_epoch(cfg, n_train=len(splits.train), world=world, batch_size=bs)
        if world.is_main:
            resume.truncate_metrics_log(self.run_dir / "metrics.jsonl", state.epoch)
        # 7. What each epoch reports and keeps: previews, a small split's probe and rule, the checkpoints' card
        small = len(splits.val) < SMALL_VAL
        p = Parts(
            cfg=cfg,
            splits=splits,
            classes=classes,
            model=model,
            net=net,
            opt=opt,
            loss_fn=loss_fn,
            scaler=scaler,
            sp=sp,
            world=world,
            batch_size=bs,
            steps_per_epoch=steps,
            total_steps=steps * cfg.train.epochs,
            dataset=TrainDataset(splits.train, cfg),
            previews_at=preview_indices(len(splits.val), cfg.train.preview_images),
            cache=FeatureCache(min(CACHE_BYTES, feature_room)) if cfg.train.freeze_encoder else None,
            train_probe=probe_indices(len(splits.train)) if small else [],
            selection=selection_words(len(splits.val), small),
            trained_on=card.trained_on(splits, cfg) if world.is_main else {},
        )
        if state.best_score is None:
            state.best_score = state.best_miou  # resumed from a run that kept its best by val mIoU alone
        return p, state

    def _prepare(self, cfg: RunConfig, world: World) -> None:
        cfg.validate()
        enc = ENCODERS[cfg.model.encoder]
        if enc.fixed_normalisation:  # what its ImageNet weights expect, kept in every checkpoint
            cfg.data.mean, cfg.data.std = enc.mean, enc.std
        if world.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.run_dir.glob(".*.tmp*"):  # left by a process killed mid-write
                stale.unlink(missing_ok=True)
        resume.seed_everything(cfg.train.seed)

    def _model(
        self, cfg: RunConfig, *, state: LoopState, world: World, saved: ckpt.Checkpoint | None
    ) -> tuple[torch.nn.Module, Speedups]:
        """The U-Net (on resume its weights come from the checkpoint: no download, no wheel needed), its
        encoder frozen as the config says, on its device with the run's precision."""
        if saved is not None:
            cfg.model.weights_from = saved.config.model.weights_from
            net = build_model(replace(cfg.model, pretrained=False, encoder_weights=None))
        else:
            enc = ENCODERS[cfg.model.encoder]
            if enc.provenance is not None and cfg.model.pretrained:
                cfg.model.weights_from = enc.provenance()
            net = build_model(cfg.model)  # the same seed everywhere: every process starts from the same weights
        bn_note = encoder_training(net, cfg)
        if bn_note:
            log.info("%s: %s", cfg.model.encoder, bn_note)
        device = pick_device(cfg.train.device)
        if device.type == "cpu" and not self._holds_threads:  # before the probe, so it measures what we run
            speedups.hold_training_threads(cpu_training_threads(world))
            self._holds_threads = True
        sp = resume.speedups_for(cfg, state, world)
        if world.distributed and sp.device.type == "cuda":
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)  # a few images per GPU: share BN statistics
        net = prepare_model(net, sp)
        if sp.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick its fastest kernels once
        return net, sp

    def _train_epoch(
        self, p: Parts, state: LoopState, *, epoch: int, steps_left: int | None
    ) -> Generator[Progress, None, EpochTrain]:
        """Train one epoch (or its rest, after a pause), yielding Progress; returns an EpochTrain."""
        t0, done_before = time.perf_counter(), state.batch
        out = EpochTrain(
            loss_sum=state.epoch_loss,
            images=state.epoch_images,
            seconds=state.epoch_seconds,
            lr=p.opt.param_groups[0]["lr"],
        )
        p.model.train()
        loader, self._order = epoch_loader(
            p.dataset,
            cfg=p.cfg,
            world=p.world,
            batch_size=p.batch_size,
            epoch=epoch,
            skip_batches=done_before,
            pin_memory=p.sp.device.type == "cuda",
        )
        for b, (images, masks) in enumerate(loader, start=done_before):
            if self._stop_everywhere(p):
                out.stopped = True
                break
            if (steps_left is not None and out.steps >= steps_left) or (out.steps and self.should_pause()):
                out.paused = True
                break
            t = p.cfg.train
            # a time budget ends the schedule by the clock (each process's own: they start together, and
            # under torchrun a rate a few milliseconds apart does no harm)
            budget_s = t.time_budget_s if t.lr_follows_time else None
            progress = schedule_progress(state.step, p.total_steps, self._elapsed(), budget_s)
            out.lr = lr_at(progress, t.learning_rate, t.schedule, state.plateau_scale)
            at = (b - done_before) * p.batch_size
            loss = train_step(p, images, masks, lr=out.lr, epoch=epoch, indices=self._order[at : at + len(images)])
            state.step, out.steps = state.step + 1, out.steps + 1
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

    def _end_epoch(self, p: Parts, state: LoopState, *, epoch: int, train: EpochTrain) -> EpochEnd:
        """Evaluate on the whole validation split, keep the best and the last checkpoint, log the epoch."""
        t_eval = time.perf_counter()
        res, s = report.score_epoch(p, train)
        is_best = beats_kept(state, score=s.score, val_loss=s.val_loss)
        state.epoch, state.batch, state.epoch_loss, state.epoch_images, state.epoch_seconds = epoch, 0, 0.0, 0, 0.0
        n_val = len(p.splits.val)
        record = report.epoch_record(
            s,
            epoch=epoch,
            lr=train.lr,
            seconds=train.seconds + time.perf_counter() - t_eval,
            train_seconds=train.seconds,
            n_val=n_val,
            is_best=is_best,
        )
        state.history.append(record)
        if is_best:
            state.best_miou, state.best_epoch, state.best_score = s.metrics.miou, epoch, s.score
            state.best_val_loss = s.val_loss
        if p.cfg.train.schedule == "plateau":
            plateau_step(state, is_best)
        state.last_metrics = report.checkpoint_metrics(
            s, epoch=epoch, names=p.classes.names, n_val=n_val, selection=p.selection
        )
        if p.world.is_main:
            if is_best:
                ckpt.save_checkpoint(
                    self.best_path, p.net, p.cfg, p.classes, metrics=state.last_metrics, trained_on=p.trained_on
                )
            self._save_last(p, state)
            report.append_jsonl(self.run_dir / "metrics.jsonl", record)
            report.draw_curves(self.run_dir / "curves.png", state.history)
        log.info(
            "epoch %d/%d: train loss %.4f, val loss %.4f, mIoU %.4f",
            epoch,
            p.cfg.train.epochs,
            s.train_loss,
            s.val_loss,
            s.metrics.miou,
        )
        return report.epoch_event(record, epochs=p.cfg.train.epochs, res=res, confusion=s.confusion)

    def _elapsed(self) -> float:
        return self.seconds_before + time.perf_counter() - self.t_start

    def _over_time(self) -> bool:
        """Past the time limit; before the run's first epoch has ended, past it by FIRST_EPOCH_GRACE_S: a budget
        run on a busy machine still ends with a checkpoint, not with none."""
        lim = self.config.train.time_budget_s
        if lim is None:
            return False
        if self._epochs_ended == 0 and not self.resume:
            lim += FIRST_EPOCH_GRACE_S
        return self._elapsed() > lim

    def _next_epoch_misses_the_budget(self, p: Parts, end: EpochEnd) -> bool:
        """With a time budget, another epoch as long as this one would be cut off before its evaluation."""
        late = next_epoch_misses_budget(self._elapsed(), end.seconds, self.config.train.time_budget_s)
        return distributed.any_of(late, p.world, p.sp.device)

    def _stop_everywhere(self, p: Parts) -> bool:
        return distributed.any_of(self.should_stop() or self._over_time(), p.world, p.sp.device)

    def _save_last(self, p: Parts, state: LoopState) -> None:
        """The resumable checkpoint (segdemo/training/resume.py). Process 0 only."""
        if not p.world.is_main:
            return
        state.seconds = self._elapsed()
        resume.save_last(
            self.last_path, net=p.net, opt=p.opt, cfg=p.cfg, classes=p.classes, state=state, trained_on=p.trained_on
        )
