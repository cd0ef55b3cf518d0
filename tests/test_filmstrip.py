"""The filmstrip's history: a frame per epoch in the run folder, written by the job, and the GIF made of them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segdemo.core import filmstrip
from segdemo.data.base import ClassSet
from segdemo.events import EpochEnd, Preview
from segdemo.server.jobs import DONE, JobManager
from tests.conftest import tiny_config

CLASSES = ClassSet.default(["background", "thing"])


def epoch_end(epoch: int, epochs: int = 3, n: int = 3, side: int = 40) -> EpochEnd:
    rng = np.random.default_rng(epoch)
    previews = [
        Preview(
            name=f"val{i}.png",
            image=rng.integers(0, 255, (side, side + 7, 3), dtype=np.uint8),
            target=rng.integers(0, 2, (side, side + 7), dtype=np.uint8),
            pred=rng.integers(0, 2, (side, side + 7), dtype=np.uint8),
        )
        for i in range(n)
    ]
    return EpochEnd(
        epoch=epoch,
        epochs=epochs,
        train_loss=1.0,
        val_loss=1.0,
        miou=0.1 * epoch,
        pixel_accuracy=0.5,
        per_class_iou=[0.5, 0.5],
        lr=1e-3,
        seconds=1.0,
        images_per_s=10.0,
        is_best=True,
        previews=previews,
    )


def test_a_tiny_runs_gif_has_one_frame_per_epoch(tmp_path):
    """Through the real job manager and trainer: the job writes each epoch's frame; the GIF has one per epoch."""
    jobs = JobManager(tmp_path / "runs", reaper=False)
    try:
        cfg = tiny_config(epochs=3)
        cfg.data.builtin_train, cfg.data.builtin_val = 16, 4
        job = jobs.submit("owner", cfg)
        job.thread.join(120)
        assert job.status == DONE, job.message
        saved = filmstrip.frames(job.run_dir)
        assert [p.name for p in saved] == ["epoch_001.png", "epoch_002.png", "epoch_003.png"]
        gif = filmstrip.write_gif(job.run_dir, tmp_path / "run.gif")
        with Image.open(gif) as im:
            assert im.format == "GIF" and im.n_frames == 3 and im.info.get("loop") == 0
            assert im.size == Image.open(saved[0]).size
    finally:
        jobs.close()


def test_frames_show_every_validation_image_and_differ_by_epoch(tmp_path):
    for e in (1, 2):
        filmstrip.save_frame(tmp_path, epoch_end(e, n=3), CLASSES)
    a, b = (np.asarray(Image.open(p)) for p in filmstrip.frames(tmp_path))
    assert a.shape == b.shape
    assert a.shape[1] == filmstrip.LABEL_W + 3 * (filmstrip.TILE + filmstrip.GAP)  # a column per image
    assert a.shape[0] == filmstrip.CAPTION_H + 3 * (filmstrip.TILE + filmstrip.GAP)  # image, truth, prediction
    assert (a != b).any()  # another epoch's predictions (and caption)
    with Image.open(filmstrip.write_gif(tmp_path, tmp_path / "two.gif")) as im:
        assert im.n_frames == 2


def test_a_long_runs_gif_is_bounded_and_keeps_first_and_last(tmp_path):
    for e in range(1, 8):
        filmstrip.save_frame(tmp_path, epoch_end(e, epochs=7, n=1, side=16), CLASSES)
    with Image.open(filmstrip.write_gif(tmp_path, tmp_path / "few.gif", max_frames=3)) as im:
        assert im.n_frames == 3
    assert filmstrip.pick(list(range(1, 101)), 60)[0] == 1 and filmstrip.pick(list(range(1, 101)), 60)[-1] == 100
    assert len(filmstrip.pick(list(range(1, 101)), 60)) == 60


def test_a_run_without_frames_gets_a_sentence(tmp_path):
    from segdemo.errors import JobError

    with pytest.raises(JobError, match="no filmstrip yet"):
        filmstrip.write_gif(tmp_path, tmp_path / "none.gif")
    assert not (tmp_path / "none.gif").exists()
