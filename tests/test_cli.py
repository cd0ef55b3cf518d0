"""`python -m segdemo` as a user runs it: real processes, real files, one-line errors."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import shared_data

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "--image-size", "32", "--width", "4", "--depth", "3", "--precision", "fp32"]


def cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "segdemo", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={"NO_ALBUMENTATIONS_UPDATE": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )


def assert_one_line_error(r, *words):
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture(scope="module")
def builtin_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    r = cli("train", "--data", "builtin", "--out", out, *TINY)
    assert r.returncode == 0, r.stderr
    assert "epoch   1/1" in r.stdout and "kept epoch 1, val mIoU" in r.stdout
    return out


def test_train_writes_a_run_folder(builtin_run):
    for name in ("best.safetensors", "last.safetensors", "metrics.jsonl", "curves.png"):
        assert (builtin_run / name).is_file()


def test_evaluate_json(builtin_run):
    r = cli("evaluate", builtin_run, "--data", "builtin", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc) >= {"miou", "pixel_accuracy", "per_class"}
    assert [c["name"] for c in doc["per_class"]] == ["background", "circle", "square", "triangle"]
    assert set(doc["per_class"][0]) == {"name", "iou", "dice", "pixel_share"}
    best = json.loads((builtin_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert doc["miou"] == pytest.approx(best["miou"], abs=1e-5)  # the same honest evaluation as training
    # where it fails: the counts behind those numbers, each true class's row as shares, the worst pairs in words
    from segdemo.core.metrics import metrics_from_confusion

    conf = doc["confusion"]
    assert conf["classes"] == [c["name"] for c in doc["per_class"]]
    assert metrics_from_confusion(np.array(conf["counts"])).miou == pytest.approx(doc["miou"], abs=1e-5)
    for counts, shares in zip(conf["counts"], conf["row_normalised"], strict=True):
        assert shares == pytest.approx([c / sum(counts) for c in counts], abs=1e-6)
    for pair in conf["most_confused"]:
        t, p = conf["classes"].index(pair["true"]), conf["classes"].index(pair["predicted"])
        assert t != p and pair["share"] == conf["row_normalised"][t][p]
        assert pair["sentence"] == f"{pair['true']} is taken for {pair['predicted']} {pair['share']:.0%} of the time"


def test_predict_writes_mask_color_overlay(builtin_run, tmp_path):
    img = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(img)
    r = cli("predict", builtin_run, img, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    mask = np.array(Image.open(tmp_path / "out" / "photo_mask.png"))
    assert mask.shape == (50, 70) and mask.max() < 4
    assert (tmp_path / "out" / "photo_overlay.png").is_file() and (tmp_path / "out" / "photo_color.png").is_file()


def test_refuses_to_overwrite_a_run(builtin_run):
    assert_one_line_error(cli("train", "--out", builtin_run, *TINY), "--resume")


def test_user_errors_are_one_line(tmp_path):
    assert_one_line_error(cli("train", "--data", tmp_path / "nope", "--out", tmp_path / "r", *TINY), "nope")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("train", "--data", tmp_path / "empty", "--out", tmp_path / "r2", *TINY), "empty")
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"\x80\x04K\x01.")  # a pickle
    assert_one_line_error(cli("predict", fake, fake, "--out", tmp_path / "o"), "pickle")
    assert_one_line_error(cli("train", "--out", tmp_path / "r3", "--lr", "5"), "learning rate")


def test_check_reports_problems(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(4):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "images" / f"{i}.png")
    for i in range(3):
        Image.fromarray(np.full((16, 16), i, np.uint8)).save(root / "masks" / f"{i}.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "2.png")  # wrong size
    r = cli("check", root)
    assert r.returncode == 1
    assert "3.png" in r.stdout and "2.png" in r.stdout


def test_version_and_help():
    import segdemo

    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"segdemo {segdemo.__version__}", r.stderr
    r = cli("train", "--help")
    assert r.returncode == 0 and "(default: builtin)" in r.stdout
    text = " ".join(r.stdout.split())
    assert "passes over the training images (default: 8)" in text
    assert "minute: about a minute (cpu); 10min: about 10 minutes (cpu); gpu: gpu, about 10 minutes" in text


def test_every_command_argument_and_option_has_help():
    from segdemo.cli import _parser

    (sub,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) == {"train", "evaluate", "predict", "check", "export", "app"}
    missing = [
        f"{name} {a.option_strings or a.dest}" for name, p in sub.choices.items() for a in p._actions if not a.help
    ]
    assert not missing, f"add help= to {missing}"


def test_train_on_camvid_subset(tmp_path):
    camvid = shared_data("camvid")
    r = cli(
        "train",
        "--data",
        camvid,
        "--classes",
        ROOT / "segdemo/data/camvid_classes.json",
        "--max-train-images",
        "8",
        "--out",
        tmp_path / "cv",
        *TINY,
    )
    assert r.returncode == 0, r.stderr
    r = cli(
        "evaluate", tmp_path / "cv", "--data", camvid, "--classes", ROOT / "segdemo/data/camvid_classes.json", "--json"
    )
    doc = json.loads(r.stdout)
    assert len(doc["per_class"]) == 11 and doc["images"] == 101
    assert np.array(doc["confusion"]["counts"]).shape == (11, 11)  # void (ignored) counts nowhere


def test_train_on_oxford_pet_mini(tmp_path):
    root = shared_data("oxford-iiit-pet-mini")
    r = cli("train", "--data", f"oxford-pet:{root}", "--pet-mode", "binary", "--out", tmp_path / "pet", *TINY)
    assert r.returncode == 0, r.stderr
    assert "background, pet" in r.stdout


def test_predict_scores_against_masks_paired_by_name(tmp_path):
    """--masks: each image against its mask, then one confusion matrix over all of them (as the app's Predict)."""
    import torch

    from segdemo.core.metrics import metrics_from_confusion
    from segdemo.core.predict import Predictor, load_ground_truth
    from segdemo.imageio import load_image_oriented

    ckpt, ex = ROOT / "checkpoints" / "shapes_unet.safetensors", ROOT / "examples"
    images = [ex / "shapes_1.png", ex / "shapes_3.png"]
    r = cli("predict", ckpt, *images, "--masks", ex / "masks", "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    assert "scored 2 image(s) against their masks" in r.stdout
    overall = float(r.stdout.split("scored 2 image(s) against their masks: mIoU ")[1].split()[0])
    predictor, cm = Predictor.from_path(ckpt), 0
    for path in images:
        image, orientation = load_image_oriented(path)
        target = load_ground_truth(ex / "masks" / path.name, image.shape, orientation, predictor.classes, path.name)
        cm = cm + predictor.predict(image, target=target).confusion
    assert overall == pytest.approx(metrics_from_confusion(cm).miou, abs=1e-4) and overall > 0.5
    assert isinstance(cm, torch.Tensor)
    for name in predictor.classes.names:
        assert any(line.startswith(name) for line in r.stdout.splitlines())  # the per-class table
    other = tmp_path / "other_mask.png"
    other.write_bytes((ex / "masks" / "shapes_1.png").read_bytes())
    assert_one_line_error(
        cli("predict", ckpt, *images, "--masks", other, "--out", tmp_path / "o"), "matches an image by file name"
    )
