"""Prediction from a checkpoint alone, at the input's own resolution, with a per-class table."""

import threading

import numpy as np
import pytest
import torch

from segdemo.core.evaluate import evaluate_model
from segdemo.core.metrics import confusion_matrix, metrics_from_confusion
from segdemo.core.predict import Predictor
from segdemo.data.base import DataError
from segdemo.data.builtin import make_sample, open_builtin
from segdemo.events import Done, EpochEnd
from segdemo.training.trainer import Trainer
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    cfg = tiny_config(epochs=2)
    Trainer(cfg, d, splits=open_builtin(cfg.data)).run()
    return d


@pytest.mark.parametrize("hw", [(128, 128), (37, 211), (300, 90)])
def test_mask_at_original_resolution(run_dir, hw):
    p = Predictor.from_path(run_dir)
    image = np.random.default_rng(0).integers(0, 255, (*hw, 3), dtype=np.uint8)
    out = p.predict(image)
    assert out.mask.shape == hw and out.mask.dtype == np.uint8 and out.mask.max() < 4
    assert out.color.shape == out.overlay.shape == (*hw, 3)
    assert out.probs.shape == (4, *hw) and np.allclose(out.probs.sum(0), 1, atol=1e-4)
    assert sum(out.pixel_share) == pytest.approx(1.0)


def test_table_matches_engine_metrics(run_dir):
    p = Predictor.from_path(run_dir)
    image, mask = make_sample(np.random.default_rng(7))
    out = p.predict(image, target=mask)
    from segdemo.data.base import ArraySource

    ev = evaluate_model(p.model, ArraySource([image], [mask], ["x"]), p.config, p.classes)
    assert out.metrics.iou == pytest.approx(ev.metrics.iou, nan_ok=True)
    assert out.metrics.miou == pytest.approx(ev.metrics.miou)
    cm = confusion_matrix(torch.from_numpy(out.mask), torch.from_numpy(mask), 4)
    assert out.metrics.miou == pytest.approx(metrics_from_confusion(cm).miou)
    assert out.errors.shape == (*mask.shape, 3)


def test_mismatched_or_foreign_ground_truth(run_dir):
    p = Predictor.from_path(run_dir)
    image, mask = make_sample(np.random.default_rng(1))
    with pytest.raises(DataError, match="upload the mask that belongs"):
        p.predict(image, target=mask[:-1])
    bad = mask.copy()
    bad[0, 0] = 9
    with pytest.raises(DataError, match=r"labels \[9\]"):
        p.predict(image, target=bad)


def test_predict_leaves_model_in_eval_and_bn_untouched(run_dir):
    p = Predictor.from_path(run_dir)
    before = {k: v.clone() for k, v in p.model.state_dict().items()}
    p.predict(make_sample(np.random.default_rng(2))[0])
    assert not p.model.training
    assert all(torch.equal(before[k], v) for k, v in p.model.state_dict().items())


def test_predicting_while_a_run_trains_leaves_the_training_untouched(tmp_path):
    """The app predicts with a running run's best checkpoint, a snapshot on disk. Predicting from another
    thread after every epoch must not change the training at all: not the model's mode, not BatchNorm's
    running statistics, not the RNG. Training is seeded, so any such leak would change the numbers."""
    cfg = tiny_config(epochs=3)

    def train(run_dir, predict_during: bool) -> tuple[list[tuple[float, float]], int]:
        calls = []
        trainer = Trainer(cfg, run_dir, splits=open_builtin(cfg.data))

        def on_event(ev):
            if predict_during and isinstance(ev, EpochEnd):
                image = make_sample(np.random.default_rng(ev.epoch))[0]

                def predict():  # a Predict request on the server's other thread, against the snapshot
                    out = Predictor.from_path(run_dir / "best.safetensors").predict(image)
                    calls.append(out.mask.shape)

                t = threading.Thread(target=predict)
                t.start()
                t.join()

        trainer.add_callback(on_event)
        history = []
        trainer.add_callback(lambda ev: isinstance(ev, EpochEnd) and history.append((ev.train_loss, ev.miou)))
        assert isinstance(trainer.run(), Done)
        return history, len(calls)

    quiet, _ = train(tmp_path / "quiet", predict_during=False)
    busy, n_predictions = train(tmp_path / "busy", predict_during=True)
    assert n_predictions == 3
    assert busy == quiet


def test_labels_in_bands_equal_the_full_upsample():
    """The banded path (bounded memory for many classes on big images) gives the full path's labels."""
    import torch

    from segdemo.core.evaluate import labels_at_size, logits_to_labels, upsample

    logits = torch.randn(1, 7, 13, 17, generator=torch.Generator().manual_seed(0))
    size = (101, 77)
    full = logits_to_labels(upsample(logits, size))[0]
    banded = labels_at_size(logits, size, band_bytes=7 * 77 * 4 * 5)  # 5 rows a band
    assert (banded == full).float().mean() > 0.999  # float rounding may flip an exact tie, nothing more
