"""Assisted labelling's engine (segdemo/core/fill.py): strokes and boxes become whole masks, every pixel a class;
bad strokes and boxes get sentences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segdemo.core import fill
from segdemo.data.base import IGNORE, DataError
from segdemo.data.builtin import make_sample

PET = Path(__file__).resolve().parents[2] / "shared" / "data" / "oxford-iiit-pet-mini" / "oxford-iiit-pet"


def shapes(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A built-in shapes photo (128 px, textured background) and its object-vs-background truth."""
    image, mask = make_sample(np.random.default_rng(seed))
    return image, (mask > 0).astype(np.uint8)


def strokes_inside(truth: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """A short stroke in each region of each class (a connected part of at least 30 pixels, within `where` when
    given) at its deepest point, as a careful student paints: one per object, one for the background."""
    import cv2

    out = np.full(truth.shape, IGNORE, np.uint8)
    for c in np.unique(truth[truth != IGNORE]):
        region = (truth == c) if where is None else (truth == c) & where
        n, parts = cv2.connectedComponents(region.astype(np.uint8))
        for k in range(1, n):
            part = (parts == k).astype(np.uint8)
            if part.sum() < 30:
                continue
            d = cv2.distanceTransform(np.pad(part, 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
            y, x = np.unravel_index(int(d.argmax()), d.shape)
            r = max(1, int(d[y, x] * 0.6))
            out[y, max(0, x - r) : x + r + 1] = c
            out[max(0, y - 1) : y + 2, x] = c
    return out


def one_object(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured background with one textured ellipse on it (128 px), and its truth."""
    import cv2

    rng = np.random.default_rng(seed)
    image = (rng.normal(90, 20, (128, 128, 3))).clip(0, 255).astype(np.uint8)
    truth = np.zeros((128, 128), np.uint8)
    cv2.ellipse(truth, (64, 60), (30, 22), 20, 0, 360, 1, -1)
    image[truth == 1] = (rng.normal((200, 120, 60), 25, ((truth == 1).sum(), 3))).clip(0, 255).astype(np.uint8)
    return image, truth


@pytest.mark.parametrize("encoder", [True, False], ids=["learned", "watershed only"])
def test_strokes_fill_every_pixel_and_agree_with_the_truth(monkeypatch, encoder):
    if not encoder:
        monkeypatch.setattr(fill, "_encoder", lambda: None)
    agree = []
    for seed in range(4):
        image, truth = shapes(seed)
        strokes = strokes_inside(truth)
        out = fill.fill_strokes(image, strokes, 2)
        assert out.mask.shape == truth.shape and out.mask.dtype == np.uint8
        assert set(np.unique(out.mask)) <= {0, 1}  # every pixel a class: nothing left unpainted
        painted = strokes != IGNORE
        assert (out.mask[painted] == strokes[painted]).all()  # the student's own strokes are never overruled
        agree.append((out.mask == truth).mean())
    assert np.mean(agree) > (0.9 if encoder else 0.85), agree  # the features separate what colour alone cannot
    assert ("learned" in out.method) == encoder


def test_one_class_painted_fills_the_photo_with_it():
    image, truth = shapes()
    strokes = np.full(truth.shape, IGNORE, np.uint8)
    strokes[5:8, 5:20] = 0
    assert (fill.fill_strokes(image, strokes, 2).mask == 0).all()


def test_the_same_strokes_fill_the_same_mask():
    image, truth = shapes()
    strokes = strokes_inside(truth)
    assert (fill.fill_strokes(image, strokes, 2).mask == fill.fill_strokes(image, strokes, 2).mask).all()


def test_a_box_around_the_object():
    image, truth = one_object()
    ys, xs = np.nonzero(truth)
    out = fill.fill_box(image, (xs.min() - 3, ys.min() - 3, xs.max() + 3, ys.max() + 3), 1, 2)
    assert set(np.unique(out.mask)) <= {0, 1}
    assert (out.mask == truth).mean() > 0.95


def test_a_box_past_the_photo_is_clipped_and_one_covering_it_all_is_the_object():
    image, _ = shapes()
    assert (fill.fill_box(image, (-50, -50, 500, 500), 1, 2).mask == 1).all()
    out = fill.fill_box(image, (60, 60, 10_000, 10_000), 1, 2)
    assert (out.mask[:50, :50] == 0).all()


@pytest.mark.parametrize(
    ("box", "words"),
    [
        ((200, 200, 300, 300), "inside the photo"),
        ((10, 10, 12, 40), "inside the photo"),
        ((float("nan"), 0, 10, 10), "four numbers"),
        (("a", 0, 10, 10), "four numbers"),
        ((1, 2, 3), "four numbers"),
    ],
)
def test_bad_boxes_get_a_sentence(box, words):
    image, _ = shapes()
    with pytest.raises(DataError, match=words):
        fill.fill_box(image, box, 1, 2)


def test_bad_strokes_get_a_sentence():
    image, truth = shapes()
    strokes = strokes_inside(truth)
    with pytest.raises(DataError, match="paint a stroke"):
        fill.fill_strokes(image, np.full(truth.shape, IGNORE, np.uint8), 2)
    with pytest.raises(DataError, match="photo is 128x128"):
        fill.fill_strokes(image, strokes[:64], 2)
    with pytest.raises(DataError, match="does not have"):
        fill.fill_strokes(image, np.where(strokes == 1, 7, strokes).astype(np.uint8), 2)
    with pytest.raises(DataError, match="1 to 32 classes"):
        fill.fill_strokes(image, strokes, 1000)
    with pytest.raises(DataError, match="class 9"):
        fill.fill_box(image, (10, 10, 60, 60), 9, 2)
    with pytest.raises(DataError, match="8 to 1024 pixels"):
        fill.fill_strokes(np.zeros((2000, 10, 3), np.uint8), np.full((2000, 10), IGNORE, np.uint8), 2)
    with pytest.raises(DataError, match="RGB"):
        fill.fill_strokes(image[..., 0], strokes, 2)


@pytest.mark.skipif(not PET.is_dir(), reason="the Oxford-IIIT Pet sample (../shared/data) is not on this machine")
def test_a_few_strokes_label_real_pet_photos():
    """On real photos, one stroke per class and at most two corrections reach most of the truth."""
    from PIL import Image

    agree = []
    for img in sorted((PET / "images").glob("*.jpg"))[:6]:
        photo = Image.open(img).convert("RGB")
        photo.thumbnail((384, 384))
        tri = Image.open(PET / "annotations" / "trimaps" / f"{img.stem}.png").resize(
            photo.size, Image.Resampling.NEAREST
        )
        t = np.array(tri)
        truth = np.select([t == 1, t == 2], [1, 0], IGNORE).astype(np.uint8)
        image = np.array(photo)
        strokes = strokes_inside(truth)
        for _ in range(2):  # the student strokes where the fill is wrong, in the wrong region's true class
            out = fill.fill_strokes(image, strokes, 2)
            fix = strokes_inside(truth, where=(out.mask != truth) & (truth != IGNORE))
            strokes = np.where(fix != IGNORE, fix, strokes).astype(np.uint8)
        out = fill.fill_strokes(image, strokes, 2)
        valid = truth != IGNORE
        agree.append((out.mask[valid] == truth[valid]).mean())
    assert np.mean(agree) > 0.9, agree


def test_a_model_from_saved_photos_prelabels_the_next_and_strokes_correct_it():
    saved = [(image, truth) for image, truth in (one_object(s) for s in range(2))]
    model = fill.LabelModel.fit(saved, 2)
    assert model is not None and model.photos == 2
    image, truth = one_object(7)
    guess = model.prelabel(image)
    assert "2 saved photos" in guess.method
    assert (guess.mask == truth).mean() > 0.9  # the next photo opens nearly labelled
    # a correction: paint part of the object as background; that region changes, the rest stays proposed
    strokes = np.full(truth.shape, IGNORE, np.uint8)
    strokes[55:58, 40:60] = 0
    out = fill.fill_strokes(image, strokes, 2, proposal=guess.mask)
    assert (out.mask[55:58, 40:60] == 0).all()
    assert (out.mask[truth == 0] == 0).mean() > 0.95  # the background the model had right stays background
    assert fill.kept_share(guess.mask, out.mask) < 1.0
    assert fill.kept_share(guess.mask, guess.mask) == 1.0
    assert fill.kept_share(guess.mask, np.full(truth.shape, IGNORE, np.uint8)) is None


def test_no_model_without_two_classes_or_the_encoder(monkeypatch):
    image, truth = one_object()
    assert fill.LabelModel.fit([], 2) is None
    assert fill.LabelModel.fit([(image, np.zeros_like(truth))], 2) is None  # one class: nothing to tell apart
    assert fill.LabelModel.fit([(image, np.full_like(truth, IGNORE))], 2) is None
    monkeypatch.setattr(fill, "_encoder", lambda: None)
    assert fill.LabelModel.fit([(image, truth)], 2) is None
    with pytest.raises(DataError, match="photo's size"):
        fill.fill_strokes(image, strokes_inside(truth), 2, proposal=truth[:10])
