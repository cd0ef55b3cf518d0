"""The take-home bundle a stranger gets from "Download ... as ONNX": named after the run, a README that says what
the model is, its classes and how it was trained and scored, a requirements file, and a script that writes the
mask, the colour mask and the overlay, run with nothing but what requirements.txt installs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdemo.export.exporter import export_zip

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints" / "shapes_unet.safetensors"
EXAMPLE = ROOT / "examples" / "shapes_3.png"
SITE = Path(np.__file__).resolve().parents[1]  # this environment's site-packages

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="the export extra (onnx, onnxruntime) is not installed",
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("bundle")
    z = export_zip(SHIPPED, tmp / "segdemo-run-20261207-0112-onnx.zip", "onnx")
    with zipfile.ZipFile(z) as f:
        names = set(f.namelist())
        f.extractall(tmp / "unzipped")
    folder = "segdemo-run-20261207-0112-onnx"
    assert names == {
        f"{folder}/{n}" for n in ("model.onnx", "meta.json", "predict_onnx.py", "README.md", "requirements.txt")
    }
    return tmp / "unzipped" / folder


def test_the_readme_says_what_it_is_its_classes_and_how_it_was_trained_and_scored(bundle):
    text = (bundle / "README.md").read_text()
    for words in (
        "| 0 | background |",
        "| 3 | triangle |",
        "can only answer in these classes",
        "built-in shapes",
        "validation mIoU 0.922 at epoch 20",
        "pip install -r requirements.txt",
        "python predict_onnx.py photo.jpg",
        "NAME_overlay.png",
    ):
        assert words in text, words
    req = (bundle / "requirements.txt").read_text().split()
    assert {r.split("=")[0].split(">")[0] for r in req} == {"numpy", "pillow", "onnxruntime"}


def _check_outputs(out: Path, image: Path) -> None:
    stem = image.stem
    photo = np.asarray(Image.open(image).convert("RGB"))
    mask = np.asarray(Image.open(out / f"{stem}_mask.png"))
    color = np.asarray(Image.open(out / f"{stem}_color.png").convert("RGB"))
    over = np.asarray(Image.open(out / f"{stem}_overlay.png").convert("RGB"))
    assert mask.shape == photo.shape[:2] and color.shape == over.shape == photo.shape
    assert set(np.unique(mask).tolist()) <= {0, 1, 2, 3} and len(np.unique(mask)) > 1
    want = np.clip(np.rint(photo * 0.5 + color * 0.5), 0, 255)
    assert np.abs(over.astype(int) - want).max() <= 1


def test_the_script_runs_with_only_numpy_pillow_and_onnxruntime_importable(bundle, tmp_path):
    """Fast: python -S (no site-packages) with a folder holding links to those three packages only."""
    only = tmp_path / "only"
    only.mkdir()
    for name in ("numpy", "numpy.libs", "PIL", "pillow.libs", "onnxruntime"):
        if (SITE / name).exists():
            (only / name).symlink_to(SITE / name)
    runner = (
        "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); sys.argv.pop(0); "
        "runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    out = tmp_path / "preds"
    r = subprocess.run(
        [sys.executable, "-S", "-c", runner, str(only), "predict_onnx.py", str(EXAMPLE), "--out", str(out)],
        cwd=bundle,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    _check_outputs(out, EXAMPLE)
    blocked = subprocess.run(
        [sys.executable, "-S", "-c", "import sys; sys.path.insert(0, sys.argv[1]); import torch", str(only)],
        capture_output=True,
    )
    assert blocked.returncode != 0  # the check is real: torch is not importable there


def test_a_clean_virtual_environment_with_only_the_requirements_file(bundle, tmp_path):
    """A stranger's steps: a new venv, pip install -r requirements.txt (from the package index pip is set up
    with), run the script. Skipped when no package index answers (offline)."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, system_site_packages=False)
    py = env_dir / "bin" / "python"
    pip = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "-r", str(bundle / "requirements.txt")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if pip.returncode != 0:
        pytest.skip(f"pip could not install the bundle's requirements here (offline?): {pip.stderr[-300:]}")
    out = tmp_path / "preds"
    r = subprocess.run(
        [str(py), "predict_onnx.py", str(EXAMPLE), "--out", str(out)],
        cwd=bundle,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    _check_outputs(out, EXAMPLE)
    assert subprocess.run([str(py), "-c", "import torch"], capture_output=True).returncode != 0
