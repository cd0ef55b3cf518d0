"""Geometry (issue 8): aspect kept, scale jitter, crop and pad with the ignore index, whole-image prediction at
the training scale, each mask back at its image's own size, and checkpoints that keep the scale."""

from __future__ import annotations

import json
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from segdemo.core import budget
from segdemo.core.checkpoint import load_checkpoint, read_meta, save_checkpoint
from segdemo.core.config import RunConfig
from segdemo.core.encoders import build_model
from segdemo.core.evaluate import evaluate_model, forward_scaled, logits_to_labels, sliding_window, upsample
from segdemo.core.losses import SegLoss
from segdemo.core.metrics import confusion_matrix
from segdemo.core.predict import Predictor
from segdemo.core.transforms import scaled_size, train_transform
from segdemo.data.base import IGNORE, ArraySource, ClassSet, Splits
from segdemo.training.batches import TrainDataset
from segdemo.training.trainer import Trainer
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints" / "shapes_unet.safetensors"
PURE = np.array([[230, 20, 20], [20, 230, 20], [20, 20, 230]], np.uint8)  # class c is the colour whose channel c wins


def blocks(h: int, w: int, cell: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An image of cell x cell squares of 3 colours and its mask, which any pixel's brightest channel gives."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 3, (h // cell + 1, w // cell + 1))
    mask = np.kron(grid, np.ones((cell, cell), int))[:h, :w].astype(np.uint8)
    return PURE[mask], mask


def interior(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 5x5 neighbourhood holds one label, 2 px inside the crop: away from borders that
    interpolation blends (an image's outer column is resampled from one side only)."""
    lo = cv2.erode(mask, np.ones((5, 5), np.uint8), borderType=cv2.BORDER_REPLICATE)
    hi = cv2.dilate(mask, np.ones((5, 5), np.uint8), borderType=cv2.BORDER_REPLICATE)
    keep = lo == hi
    keep[:2], keep[-2:], keep[:, :2], keep[:, -2:] = False, False, False, False
    return keep


@pytest.mark.parametrize("resize, hw", [("short", (96, 160)), ("long", (150, 90)), ("short", (37, 91))])
def test_mask_stays_aligned_with_its_image_through_scale_crop_and_pad(resize, hw):
    cfg = RunConfig().data
    cfg.resize, cfg.image_size, cfg.crop_size, cfg.scale_range = resize, 64, 56, (0.6, 1.5)
    full = train_transform(cfg)
    # without the small rotation (bilinear image, nearest mask: a few interior pixels may differ) the scale,
    # jitter, pad and crop must agree on every interior pixel
    exact = A.Compose([t for t in full.transforms if not isinstance(t, A.Affine)])
    padded_seen = 0
    for seed in range(80):
        tf, need = (exact, 1.0) if seed % 2 else (full, 0.995)
        image, mask = blocks(*hw, cell=max(hw) // 6, seed=seed)  # cells of several pixels at the smallest scale
        tf.set_random_seed(seed)
        out = tf(image=image, mask=mask)
        im, m = out["image"], out["mask"]
        assert im.shape == (56, 56, 3) and m.shape == (56, 56), "every crop of a run has the crop size"
        inside = interior(m)
        labelled = inside & (m != IGNORE)
        assert labelled.sum() > 20, seed
        agree = (im.argmax(2)[labelled] == m[labelled]).mean()
        assert agree >= need, f"seed {seed}: mask and image agree on {agree:.3%} of interior pixels"
        pad = inside & (m == IGNORE)
        grey = im.max(2) == im.min(2)  # the black fill, after brightness jitter: no channel wins
        assert grey[pad].all(), "padding and rotation borders are filled in the image, IGNORE in the mask"
        assert (m[inside & grey] == IGNORE).all(), "no padded pixel is ever given a class"
        padded_seen += int(pad.any())
    assert padded_seen >= 5, "the scale jitter must sometimes make the image smaller than the crop"


def test_training_scale_keeps_the_aspect_ratio():
    d = RunConfig().data
    assert scaled_size(360, 480, d) == (64, 85) and scaled_size(480, 360, d) == (85, 64)
    d.resize = "long"
    assert scaled_size(360, 480, d) == (48, 64) and scaled_size(37, 91, d) == (26, 64)
    d.resize = "short"
    assert scaled_size(10, 4000, d) == (1, 512), "a long strip is bounded at MAX_ASPECT x the scale"
    d.resize = "square"
    assert scaled_size(360, 480, d) == (64, 64)


@pytest.mark.parametrize("kind", ["ce", "ce_dice", "dice", "bce"])
def test_padded_pixels_are_ignored_in_the_loss(kind):
    torch.manual_seed(0)
    channels = 1 if kind == "bce" else 3
    logits = torch.randn(2, channels, 24, 24)
    target = torch.randint(0, 2 if kind == "bce" else 3, (2, 24, 24))
    target[:, 16:, :] = IGNORE
    target[1, :, 20:] = IGNORE
    changed = logits.clone()
    changed[target[:, None].expand_as(changed) == IGNORE] = 50.0  # anything at all where the mask is padding
    loss = SegLoss(kind)
    assert torch.allclose(loss(logits, target), loss(changed, target))


def test_padded_pixels_are_ignored_in_metrics():
    pred = torch.randint(0, 3, (1, 20, 20))
    target = pred.clone()
    target[:, :, 12:] = IGNORE
    pred[:, :, 12:] = (pred[:, :, 12:] + 1) % 3  # wrong everywhere the mask is padding
    cm = confusion_matrix(pred, target, 3)
    assert int(cm.sum()) == 20 * 12 and int(cm.trace()) == 20 * 12


def _net(tmp_path, **data) -> Path:
    cfg = tiny_config()
    for k, v in data.items():
        setattr(cfg.data, k, v)
    cfg.model.num_classes = 4
    torch.manual_seed(0)
    classes = ClassSet.default(["background", "circle", "square", "triangle"])
    return save_checkpoint(tmp_path / "net.safetensors", build_model(cfg.model).eval(), cfg, classes)


class Inputs:
    """Records the (H, W) of every tensor the model is given."""

    def __init__(self, model):
        self.seen = []
        model.register_forward_pre_hook(lambda m, args: self.seen.append(tuple(args[0].shape[-2:])))


@pytest.mark.parametrize("resize", ["short", "long"])
def test_predict_returns_the_original_size_for_odd_sizes_and_aspects(tmp_path, resize):
    predictor = Predictor.from_path(_net(tmp_path, resize=resize, image_size=48), device="cpu")
    inputs = Inputs(predictor.model)
    rng = np.random.default_rng(0)
    for h, w in [(37, 91), (360, 480), (480, 360), (91, 37), (1, 300), (513, 7)]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        target = rng.integers(0, 4, (h, w), dtype=np.uint8)
        p = predictor.predict(image, target)
        assert p.mask.shape == (h, w) and p.color.shape == p.overlay.shape == (h, w, 3)
        assert p.errors.shape == (h, w, 3)
        assert inputs.seen[-1] == scaled_size(h, w, predictor.config.data), "the whole image, aspect kept"
    assert inputs.seen[1] == ((48, 64) if resize == "short" else (36, 48)), "360x480 at the scale 48"


def test_shipped_checkpoint_predicts_exactly_as_before(tmp_path):
    """A checkpoint from before aspect-kept geometry has no `resize` field: it squashes square, as it was trained."""
    meta = read_meta(SHIPPED)
    assert "resize" not in meta["config"]["data"]
    predictor = Predictor.from_path(SHIPPED, device="cpu")
    d = predictor.config.data
    assert d.resize == "square" and d.image_size == 64
    image = cv2.imread(str(ROOT / "examples" / "shapes_1.png"))[:, :, ::-1]
    image = np.ascontiguousarray(cv2.resize(image, (91, 37), interpolation=cv2.INTER_AREA))
    # the old code path, written out: square INTER_AREA resize, model, bilinear up-sampling, argmax
    from segdemo.core.transforms import to_tensor

    x = to_tensor(cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA)[None], d.mean, d.std)
    with torch.inference_mode():
        old = logits_to_labels(upsample(predictor.model(x), (37, 91)))[0].numpy()
    assert np.array_equal(predictor.predict(image).mask, old)


def test_a_checkpoint_round_trip_keeps_the_scale(tmp_path):
    path = _net(tmp_path, resize="long", image_size=48, crop_size=40, scale_range=(0.7, 1.4), window=96)
    d = load_checkpoint(path).config.data
    assert (d.resize, d.image_size, d.crop_size, d.scale_range, d.window) == ("long", 48, 40, (0.7, 1.4), 96)
    norm = read_meta(path)["normalization"]
    assert norm["image_size"] == 48 and norm["resize"] == "long" and norm["window"] == 96


def test_a_job_record_without_resize_is_read_as_square():
    old = RunConfig().to_dict()
    for k in ("resize", "crop_size", "scale_range", "window"):
        del old["data"][k]
    assert RunConfig.from_stored(old).data.resize == "square"
    assert RunConfig.from_stored(RunConfig().to_dict()).data.resize == "short"
    assert RunConfig.from_dict(json.loads(json.dumps(old))).data.resize == "short"  # a fresh config: the new default


def test_sliding_window_covers_the_image_and_equals_one_pass_when_it_fits():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = build_model(cfg.model).eval()
    x = torch.randn(1, 3, 70, 130)
    with torch.inference_mode():
        whole = model(x)
        assert torch.allclose(sliding_window(model, x, 200), whole)
        tiled = sliding_window(model, x, 48)
    assert tiled.shape == whole.shape and torch.isfinite(tiled).all()
    # away from tile borders a 3-level U-Net sees the same context: most labels agree with one pass
    assert (tiled.argmax(1) == whole.argmax(1)).float().mean() > 0.8


def test_predict_with_a_window_runs_tiles_and_returns_the_original_size(tmp_path):
    predictor = Predictor.from_path(_net(tmp_path, image_size=64, window=48), device="cpu")
    inputs = Inputs(predictor.model)
    image = np.random.default_rng(1).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    assert predictor.predict(image).mask.shape == (300, 500)
    assert set(inputs.seen) <= {(48, 48)} and len(inputs.seen) > 4


def test_evaluation_groups_variable_sizes_and_matches_one_image_at_a_time():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    rng = np.random.default_rng(2)
    sizes = [(40, 60), (60, 40), (40, 60), (33, 77), (40, 60)]
    images = [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in sizes]
    masks = [rng.integers(0, 4, s, dtype=np.uint8) for s in sizes]
    with torch.inference_mode():
        together = forward_scaled(model, images, cfg, torch.device("cpu"))
        alone = [forward_scaled(model, [im], cfg, torch.device("cpu"))[0] for im in images]
    for a, b, s in zip(together, alone, sizes, strict=True):
        assert a.shape[-2:] == scaled_size(*s, cfg.data) and torch.allclose(a, b, atol=1e-5)
    classes = ClassSet.default(["a", "b", "c", "d"])
    r = evaluate_model(model, ArraySource(images, masks, [str(i) for i in range(5)]), cfg, classes, batch_size=3)
    assert int(r.confusion.sum()) == sum(h * w for h, w in sizes), "every pixel at its mask's own resolution"


def test_training_on_photos_of_mixed_sizes_stacks_fixed_crops(tmp_path):
    cfg = tiny_config(epochs=1, batch_size=4)
    cfg.data.image_size, cfg.data.crop_size = 40, 32
    sizes = [(50, 80), (80, 50), (37, 91), (64, 64), (45, 45), (100, 60), (60, 100), (33, 40)]
    pairs = [blocks(h, w, 8, seed=i) for i, (h, w) in enumerate(sizes)]
    source = ArraySource([p[0] for p in pairs], [p[1] for p in pairs], [f"im{i}" for i in range(8)])
    ds = TrainDataset(source, cfg)
    assert {tuple(ds[i][0].shape) for i in range(8)} == {(32, 32, 3)}
    classes = ClassSet.default(["red", "green", "blue"])
    splits = Splits(
        train=source, val=ArraySource(source.images[:3], source.masks[:3], ["a", "b", "c"]), classes=classes
    )
    result = Trainer(cfg, tmp_path, splits=splits).run()
    assert result.reason == "finished", result
    predictor = Predictor.from_path(tmp_path / "best.safetensors", device="cpu")
    assert predictor.config.data.crop == 32 and predictor.predict(pairs[2][0]).mask.shape == (37, 91)


def test_the_budget_counts_whole_images_at_the_training_scale():
    square, short = RunConfig(), RunConfig()
    square.data.resize = "square"
    assert budget.inference_bytes(short) > budget.inference_bytes(square), "a 8:1 strip at the scale is 8x the square"
    windowed = RunConfig()
    windowed.data.image_size, windowed.data.window = 512, 128
    whole = RunConfig()
    whole.data.image_size = 512
    assert budget.inference_bytes(windowed) < budget.inference_bytes(whole)
    # and the estimate holds a real prediction's measured peak of class scores: 8x the square at most
    cfg = RunConfig()
    assert budget._eval_pixels(cfg)[2] == 8 * 64 * 64 >= np.prod(scaled_size(10, 4000, cfg.data))
