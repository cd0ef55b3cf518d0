"""RunView, the Train tab's view of one run, on its own: events in, words, curves, tables and pictures out.
No gradio and no server: a run is a few events and a stand-in job."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from segdemo.core.config import quick_cpu_preset
from segdemo.events import Done, EpochEnd, Failed, Preview, Progress, Started
from segdemo.server.jobs import DONE, FAILED, QUEUED, RUNNING, STOPPED
from segdemo.ui.run_view import RunView, run_line


def _job(status=RUNNING, **kw):
    cfg = quick_cpu_preset()
    cfg.train.epochs, cfg.train.batch_size, cfg.train.time_budget_s = 3, 4, None
    return SimpleNamespace(
        status=status,
        config=cfg,
        paused=None,
        run_dir=Path("/srv/runs/abc"),
        message="",
        **{"note": "", "where": None, **kw},
    )


def _started(**kw):
    return Started(
        run_dir="/srv/runs/abc", device="cpu", precision="fp32", epochs=3, start_epoch=1, n_train=8, n_val=4,
        class_names=["background", "cat"], class_colors=[(0, 0, 0), (255, 0, 0)], parameters=1_500_000, **kw,
    )  # fmt: skip


def _epoch(n, miou, best=False, **kw):
    return EpochEnd(
        epoch=n, epochs=3, train_loss=1.0 / n, val_loss=1.2 / n, miou=miou, pixel_accuracy=0.9,
        per_class_iou=[0.9, miou], lr=1e-3, seconds=10.0, images_per_s=20.0, is_best=best, **kw,
    )  # fmt: skip


def _preview(name="a.png"):
    target = np.zeros((8, 8), np.uint8)
    target[:4] = 1
    image, pred = np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), np.uint8)
    return Preview(name=name, image=image, target=target, pred=pred, miou=0.25)


def test_the_view_imports_no_gradio():
    code = "import sys, segdemo.ui.run_view; assert 'gradio' not in sys.modules and 'pandas' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)  # a fresh interpreter: other tests import gradio


def test_events_fold_in_and_say_what_changed():
    view = RunView()
    assert view.add(_started()) is True
    assert view.add(Progress(epoch=1, batch=1, n_batches=2, loss=0.5, images_per_s=10.0)) is False
    assert view.add(_epoch(1, 0.4, best=True)) is True
    assert view.add(object()) is False
    assert view.classes.names == ("background", "cat")
    assert view.best().epoch == 1


def test_waiting_in_line_says_the_place_and_the_wait():
    text = RunView().status(_job(QUEUED), position=3, running=2, wait_s=125)
    assert "number 3 in line" in text and "about **2:05** from now" in text and "2 runs training now" in text


def test_a_running_epoch_shows_its_batch_time_left_and_kept_epoch():
    view = RunView()
    assert view.status(_job(), 1, 1).startswith("Preparing the data")
    view.add(_started(warnings=["few photos"]))
    assert view.status(_job(), 1, 1).startswith("**Epoch 1/3** starting")
    view.add(_epoch(1, 0.4, best=True))
    view.add(Progress(epoch=2, batch=1, n_batches=2, loss=0.5, images_per_s=10.0))
    text = view.status(_job(), 1, 1)
    assert text.startswith("**Epoch 2/3** · batch 1/2 · 20 images/s")  # the last epoch's rate, early in an epoch
    assert "left" in text and "kept so far: epoch 1, val mIoU 0.400" in text
    assert "1.50 M parameters" in text and "⚠ few photos" in text and "This run's settings" in text


def test_how_a_run_ended():
    view = RunView()
    view.add(_started())
    view.add(_epoch(1, 0.4, best=True))
    view.add(Done(reason="finished", epochs_done=1, best_miou=0.4, best_epoch=1, best_checkpoint="b",
                  last_checkpoint="l", seconds=70.0))  # fmt: skip
    assert view.status(_job(DONE), 1, 0).startswith("✓ **Finished**: 1 epochs in 1:10; kept epoch 1")
    assert view.status(_job(STOPPED), 1, 0).startswith("■ **Stopped** after 1 epoch in 1:10")
    # an instant run on photos says the next step (the minute preset fine-tunes the ImageNet encoder); on the
    # built-in shapes that preset trains the tutorial U-Net from scratch, so the sentence would be false there
    instant = _job(DONE)
    instant.config.train.freeze_encoder = True
    instant.config.data.source = "builtin"
    assert "Next: fine-tune" not in view.status(instant, 1, 0)
    instant.config.data.source = "/srv/uploads/labelled-photos.zip"
    assert "Next: fine-tune" in view.status(instant, 1, 0)
    failed = RunView(end=Failed(message="could not read /srv/runs/abc/data/x.png in /srv/runs/abc/data"))
    assert failed.status(_job(FAILED), 1, 0) == "✗ **Training failed:** Could not read x.png in the dataset."


def test_curves_table_and_pictures():
    view = RunView()
    assert view.curves() is None and view.table() is None and view.filmstrip() == [] and view.worst() == []
    view.add(_started())
    view.add(_epoch(1, 0.4, best=True, previews=[_preview()]))
    curves = view.curves()
    assert len(curves.rows) == 3 and curves.x_lim == [1, 5] and curves.caption.startswith("Epoch 1: train loss")
    confusion = np.array([[10, 2], [3, 5]])
    view.add(_epoch(2, 0.3, confusion=confusion, worst=[_preview("w.png")]))
    assert view.curves().caption is None
    columns, rows = view.table()
    assert columns == ["class", "IoU, epoch 2 (latest)", "IoU, epoch 1 (kept)"]
    assert rows[-1] == ["mean (mIoU)", "0.300", "0.400"]
    film = view.filmstrip()
    assert [caption for _, caption in film] == ["a.png", "truth", "pred 50%"]
    assert film[0][0].shape[0] >= 128  # small pictures are enlarged
    assert view.worst()[0][1] == "w.png: mIoU 0.25"
    assert "epoch 2" in view.confusion()


def test_run_line_names_the_loss_by_its_label():
    cfg = quick_cpu_preset()
    assert f"batch {cfg.train.batch_size}" in run_line(cfg) and "augmentation" in run_line(cfg)
