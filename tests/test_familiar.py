"""Predict says what a model knows: its card (trained on what, its classes, that it can only answer in them), a
plain warning for an image unlike its training images, and the newest upload as the picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segdemo.core.checkpoint import load_checkpoint, read_meta
from segdemo.core.config import DataConfig
from segdemo.events import Done
from segdemo.imageio import load_image
from segdemo.training.familiar import stats_of, training_stats, unlike
from segdemo.training.trainer import Trainer
from tests.conftest import SHARED_DATA, tiny_config
from tests.sloppy import pet_photo, write_sloppy_set

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints" / "shapes_unet.safetensors"
EXAMPLES = sorted((ROOT / "examples").glob("*.png"))


def _photo(size=(375, 500)) -> np.ndarray:
    """A photograph-like picture: smooth, low-saturation tones with fine texture, not 128x128."""
    rng = np.random.default_rng(3)
    h, w = size
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    base = np.stack([0.45 + 0.2 * yy, 0.4 + 0.15 * xx, 0.35 + 0.1 * yy], -1)
    img = base + rng.normal(0, 0.02, (h, w, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def test_the_shipped_shapes_model_warns_on_a_photograph_and_not_on_its_examples():
    ckpt = load_checkpoint(SHIPPED)
    stats = stats_of(ckpt.meta, ckpt.config)  # an older checkpoint of the built-in data: drawn again
    assert stats and stats["one_size"] == [128, 128]
    for ex in EXAMPLES:
        assert unlike(stats, load_image(ex)) is None, ex
    words = unlike(stats, _photo())
    assert words and "unlike the images this model was trained on" in words and "500x375" in words


def test_real_pet_photos_are_unlike_the_shapes_even_at_the_shapes_size():
    pets = sorted((SHARED_DATA / "oxford-iiit-pet-mini" / "oxford-iiit-pet" / "images").glob("*.jpg"))[:20]
    if not pets:
        pytest.skip("real data not here: ../shared/data/oxford-iiit-pet-mini")
    import cv2

    ckpt = load_checkpoint(SHIPPED)
    stats = stats_of(ckpt.meta, ckpt.config)
    flagged = [unlike(stats, cv2.resize(load_image(p), (128, 128), interpolation=cv2.INTER_AREA)) for p in pets]
    assert sum(f is not None for f in flagged) >= 0.6 * len(pets)
    assert all(unlike(stats, load_image(p)) for p in pets)  # at their own size, every one


def test_a_run_keeps_what_it_was_trained_on_in_its_checkpoint(tmp_path):
    root = write_sloppy_set(tmp_path / "pets")
    cfg = tiny_config(epochs=1, batch_size=2)
    cfg.data = DataConfig(source=str(root), image_size=32)
    done = list(Trainer(cfg, tmp_path / "run").events())[-1]
    assert isinstance(done, Done)
    meta = read_meta(tmp_path / "run" / "best.safetensors")
    on = meta["trained_on"]
    assert on["source"] == "pets" and on["train_images"] == 5 and on["val_images"] == 1
    assert on["images"]["n"] == 5 and len(on["images"]["mean"]) == 6
    assert unlike(on["images"], pet_photo(50)[0]) is None  # one more of the same kind: familiar
    assert unlike(on["images"], _photo()) is not None


def test_training_stats_of_an_empty_source_are_empty():
    from segdemo.data.base import ArraySource

    assert training_stats(ArraySource([], [], [])) == {}
    assert unlike({}, _photo()) is None


def test_the_model_card_says_what_it_learnt_from_and_that_it_can_only_answer_in_its_classes():
    from segdemo.ui.predict_tab import PredictTab

    card = PredictTab.describe_path(None, SHIPPED)
    assert "Trained on** the built-in shapes" in card
    assert "can only answer in these classes" in card
    assert "background, circle, square, triangle" in card


def test_the_newest_upload_becomes_the_picture():
    from segdemo.ui.predict_tab import _pick

    assert _pick(["shapes_1.png"], None, []) == "shapes_1.png"
    assert _pick(["shapes_1.png", "cat.jpg"], "shapes_1.png", ["shapes_1.png"]) == "cat.jpg"
    # the page already knows both: the student's pick stays
    assert _pick(["shapes_1.png", "cat.jpg"], "shapes_1.png", ["shapes_1.png", "cat.jpg"]) == "shapes_1.png"
    assert _pick(["a.png", "b.png"], "gone.png", ["a.png", "b.png"]) == "a.png"
