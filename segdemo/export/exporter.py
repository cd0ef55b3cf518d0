"""Take the model out: write a checkpoint as ONNX or TorchScript, with meta.json and a standalone predict script.

    from segdemo.export.exporter import export_model
    result = export_model("checkpoints/shapes_unet.safetensors", "exported/", fmt="onnx")
    result.model, result.meta, result.script   # model.onnx, meta.json, predict_onnx.py

The exported model is the U-Net alone, wrapped so that it takes any height and width:

    input  "image":  (N, 3, H, W) float32, RGB scaled to 0..1 then normalised with meta.json's mean and std;
                     H and W free (at least meta.json's input.min_size), N free
    output "logits": (N, C, H, W) float32 class scores at the input's size (C = 1: one binary logit, > 0 is class 1)

Prediction as segdemo does it (segdemo/core/evaluate.py forward_resized) resizes the image to the training scale
(OpenCV INTER_AREA; its short or long side to image_size, aspect ratio kept; square only for checkpoints from
before that, transforms.scaled_size), runs the model on the whole image (or in overlapping windows when the
run set one), up-samples the logits bilinearly (align_corners=False) to the
image's own size and takes the argmax. The predict script written beside the model does exactly that with
numpy and Pillow only; meta.json names every number it needs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import segdemo
from segdemo.atomic import replace_file
from segdemo.core.checkpoint import Checkpoint, load_checkpoint, resolve_checkpoint
from segdemo.core.model import UNet
from segdemo.core.transforms import MAX_ASPECT
from segdemo.data.base import IGNORE
from segdemo.errors import ConfigError, ExportError  # noqa: F401  (ExportError re-exported)

FORMATS = ("onnx", "torchscript")
_AREA = "OpenCV INTER_AREA (cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA))"
_RESIZE_TEXT = {  # meta.json's sentence for each DataConfig.resize rule (transforms.scaled_size)
    "short": f"aspect ratio kept: the short side to image_size, the long side at most max_aspect x image_size; "
    f"each side rounded to the nearest pixel; {_AREA}",
    "long": f"aspect ratio kept: the long side to image_size; each side rounded to the nearest pixel; {_AREA}",
    "square": f"to image_size x image_size, whatever the aspect ratio; {_AREA}",
}
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
SCRIPTS = {"onnx": "predict_onnx.py", "torchscript": "predict_torchscript.py"}
# what a stranger installs to run the script (a fresh virtual environment, nothing else): segdemo's own floors
# for numpy and Pillow, and the runtime segdemo's export is tested with
REQUIREMENTS = {
    "onnx": ["numpy>=2.0", "pillow>=11.0", "onnxruntime==1.31.1"],
    "torchscript": ["numpy>=2.0", "pillow>=11.0", f"torch=={torch.__version__.split('+')[0]}"],
}
OPSET = 17
# refuse an export whose logits differ more than this from PyTorch's (the tests hold 1e-4; README, Export); looser so
# that another CPU's kernels never block an export, while a wrong pad or crop (whole units) is still caught
CHECK_TOLERANCE = 1e-3
INSTALL_HINT = 'pip install onnx==1.23.2 onnxruntime==1.31.1 (in a segdemo checkout: pip install ".[export]")'
_SCRIPT_DIR = Path(__file__).resolve().parent / "scripts"


@dataclass(frozen=True)
class ExportResult:
    """What export_model wrote: the model, meta.json and the predict script, all in one folder."""

    format: str  # "onnx" or "torchscript"
    model: Path  # model.onnx or model.torchscript.pt
    meta: Path  # meta.json: classes, colours, normalisation, sizes
    script: Path  # predict_onnx.py or predict_torchscript.py
    max_abs_diff: float | None  # exported vs PyTorch logits on a check input; None when onnxruntime is absent
    readme: Path | None = None  # README.md: what the model is, its classes, how it was trained and scored
    requirements: Path | None = None  # requirements.txt: the script's packages, for a fresh virtual environment

    @property
    def paths(self) -> tuple[Path, ...]:
        """The files, e.g. to offer them for download: model, meta.json, script, README.md, requirements.txt."""
        return tuple(p for p in (self.model, self.meta, self.script, self.readme, self.requirements) if p)


class PaddedModel(nn.Module):
    """The net with its own padding made size-independent: (N, 3, H, W) -> (N, C, H, W) logits, any H and W.

    UNet.forward reflect-pads the bottom and right to a multiple of its stride and crops back, but it decides
    with Python `if`s on the size, which a trace records as constants for the example's size. Here the pad
    amount is arithmetic on the traced size, so the exported graph pads correctly for every H and W; the net's
    own `if`s then always see a multiple and take the same branch as in the trace.
    """

    def __init__(self, model: nn.Module, multiple: int, image_size: int):
        super().__init__()
        self.model = model
        self.multiple = multiple
        # The padding mode the net itself uses at the training size: reflect, unless the pad is not smaller
        # than the image, where reflect is impossible and the net replicates (only depth 6 at 32 px). Such an
        # export replicates at every size, so it matches the net at the training size (all that prediction
        # feeds it) and at sizes up to 32, not at larger sizes where the net reflects.
        self.mode = "reflect" if (-image_size) % multiple < image_size else "replicate"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float32 normalised -> (N, C, H, W) float32 logits."""
        h, w = x.shape[-2], x.shape[-1]
        pad_h = (self.multiple - h % self.multiple) % self.multiple
        pad_w = (self.multiple - w % self.multiple) % self.multiple
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=self.mode)
        return self.model(x)[..., :h, :w]


def export_model(checkpoint_path: str | Path, out_dir: str | Path, fmt: str = "onnx") -> ExportResult:
    """Write checkpoint_path (a .safetensors file or a run folder) to out_dir as fmt; see the module docstring.

    Raises CheckpointError for a missing or bad checkpoint, ConfigError for an unknown fmt, ExportError when
    ONNX export lacks the onnx package or the exported model disagrees with PyTorch. Files already in out_dir
    with the same names are replaced (each by rename, never left half-written).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "onnx" and importlib.util.find_spec("onnx") is None:
        raise ExportError(f"ONNX export needs the onnx package, which is not installed: {INSTALL_HINT}")
    source = resolve_checkpoint(checkpoint_path)
    ck = load_checkpoint(source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wrapped = PaddedModel(ck.model.eval(), pad_multiple(ck.model), ck.config.data.image_size).eval()
    size = ck.config.data.image_size
    example = torch.zeros(1, 3, size, size)
    model_path = out / MODEL_FILES[fmt]
    write = _export_onnx if fmt == "onnx" else _export_torchscript
    # an odd size where the net pads the same way as at the training size (see PaddedModel)
    odd = (size + 5, size + 3) if wrapped.mode == "reflect" else (size - 5, size - 3)
    fd, name = tempfile.mkstemp(prefix=f".{model_path.name}.", suffix=".tmp", dir=out)
    os.close(fd)
    tmp = Path(name)
    try:
        with _quiet():
            write(wrapped, example, tmp)
            diff = check_export(ck.model, tmp, fmt, [(size, size), odd])
        if diff is not None and diff > CHECK_TOLERANCE:
            raise ExportError(
                f"the exported model's logits differ from PyTorch's by {diff:.2g} (more than "
                f"{CHECK_TOLERANCE:g}); nothing was written. Please report this with the checkpoint"
            )
        os.replace(tmp, model_path)  # a model file is whole or absent, never half-written
    finally:
        tmp.unlink(missing_ok=True)
    meta_path = replace_file(out / "meta.json", json.dumps(export_meta(ck, source, fmt), indent=2).encode() + b"\n")
    script_path = out / SCRIPTS[fmt]
    replace_file(script_path, (_SCRIPT_DIR / SCRIPTS[fmt]).read_bytes())
    req = replace_file(out / "requirements.txt", ("\n".join(REQUIREMENTS[fmt]) + "\n").encode())
    readme = replace_file(out / "README.md", bundle_readme(ck, fmt).encode())
    return ExportResult(fmt, model_path, meta_path, script_path, diff, readme, req)


def export_zip(checkpoint_path: str | Path, zip_path: str | Path, fmt: str = "onnx") -> Path:
    """export_model() into one .zip for a browser to download: its files in one folder named like the zip
    (model, meta.json, predict script, README.md, requirements.txt), so unzipping makes one tidy folder."""
    import zipfile

    zip_path = Path(zip_path)
    folder = zip_path.stem
    with tempfile.TemporaryDirectory(dir=zip_path.parent) as tmp:
        result = export_model(checkpoint_path, Path(tmp) / "files", fmt)
        part = Path(tmp) / "bundle.zip"
        with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as z:
            for f in result.paths:
                z.write(f, f"{folder}/{f.name}")
        os.replace(part, zip_path)
    return zip_path


def bundle_readme(ck: Checkpoint, fmt: str) -> str:
    """README.md of an export: what the model is, its classes, how it was trained and scored, how to run it."""
    from segdemo.training.card import source_name

    cfg, m = ck.config, ck.metrics or {}
    trained_on = ck.meta.get("trained_on")
    on: dict = trained_on if isinstance(trained_on, dict) else {}
    script, model_file = SCRIPTS[fmt], MODEL_FILES[fmt]
    data = on.get("description") or source_name(cfg.data.source)
    if cfg.data.source == "builtin" and not on:
        data = f"built-in shapes: {cfg.data.builtin_train} train / {cfg.data.builtin_val} val synthetic images, 128x128"
    classes = "\n".join(
        f"| {i} | {_cell(n)} | rgb{tuple(c)} |" for i, (n, c) in enumerate(zip(ck.classes.names, ck.classes.colors))
    )
    score = "not recorded"
    if isinstance(m.get("miou"), int | float):
        score = f"validation mIoU {m['miou']:.3f} at epoch {m.get('epoch', '?')}"
        if m.get("val_images"):
            score += f", on {m['val_images']} validation images ({m.get('val_pixels', 0):,} labelled pixels)"
        if m.get("train_miou") is not None:
            score += f"; mIoU on a sample of its training images {m['train_miou']:.3f}"
    rule = m.get("selection") or "the checkpoint kept is the epoch with the highest validation mIoU"
    runtime = "onnxruntime" if fmt == "onnx" else "PyTorch"
    return f"""# A segmentation model exported by segdemo

A U-Net that gives every pixel of an image one of {ck.classes.num_classes} classes. `{model_file}` is the
network; `{script}` runs it with numpy, Pillow and {runtime} only (no segdemo); `meta.json` holds every number
the script needs (classes, colours, image size, normalisation).

## Classes

| id | name | colour |
| --- | --- | --- |
{classes}

The model can only answer in these classes: every pixel of any image gets one of them, even where none fits.
On images unlike the ones it was trained on, expect its answer to be meaningless.

## How it was trained and scored

- Data: {_cell(data)}
- Settings: images at {cfg.data.image_size} px ({cfg.data.resize} side), U-Net width {cfg.model.width}, depth
  {cfg.model.depth}, {cfg.model.upsampling} up-sampling, loss {cfg.train.loss}, up to {cfg.train.epochs} epochs,
  batch {cfg.train.batch_size}, learning rate {cfg.train.learning_rate:g} ({cfg.train.schedule})
- Score: {score}; {rule}. A score on other kinds of images would be different.
- segdemo {segdemo.__version__}, exported as {fmt}

## Run it

```bash
python3 -m venv .venv
.venv/bin/pip install -r requirements.txt
.venv/bin/python {script} photo.jpg [more.png ...] --out preds/
```

For each image it writes, at the image's own size:

- `NAME_mask.png`: the class id of each pixel (0, 1, 2, ...), a greyscale PNG
- `NAME_color.png`: each class in its colour
- `NAME_overlay.png`: the photo with the colours laid over it
"""


def _cell(text) -> str:
    """Text from a checkpoint in a Markdown line or table cell: one line, no table pipes."""
    return " ".join(str(text).split()).replace("|", "/")[:300]


def _source_name(source: str) -> str:
    from segdemo.training.card import source_name

    return source_name(source)


def pad_multiple(model: nn.Module) -> int:
    """The stride the net pads its input to: 2**depth for a plain U-Net, 32 for a ResNet encoder."""
    return 2**model.depth if isinstance(model, UNet) else 32


def export_meta(ck: Checkpoint, source: Path, fmt: str) -> dict[str, Any]:
    """meta.json's document: everything a standalone script needs to pre- and post-process like segdemo."""
    cfg = ck.config
    multiple = pad_multiple(ck.model)
    return {
        "format": fmt,
        "model_file": MODEL_FILES[fmt],
        "input": {
            "name": "image",
            "shape": ["N", 3, "H", "W"],
            "dtype": "float32",
            "channels": "RGB",
            "min_size": multiple // 2 + 1 if (-cfg.data.image_size) % multiple < cfg.data.image_size else 1,
        },
        "output": {
            "name": "logits",
            "shape": ["N", cfg.model.num_classes, "H", "W"],
            "dtype": "float32",
            "binary": cfg.model.num_classes == 1,
        },
        "classes": ck.classes.to_dict(),
        "ignore_index": IGNORE,  # in segdemo's masks; a prediction never holds it
        "preprocessing": {
            "image_size": cfg.data.image_size,
            "resize_mode": cfg.data.resize,
            "max_aspect": MAX_ASPECT,
            "window": cfg.data.window,
            "resize": _RESIZE_TEXT[cfg.data.resize],
            "max_value": 255,
            "mean": list(cfg.data.mean),
            "std": list(cfg.data.std),
            "formula": "x = (rgb_uint8 / max_value - mean) / std, float32, channels first",
        },
        "postprocessing": "logits up-sampled bilinearly (align_corners=False) to the image's own size, then "
        "argmax over classes (one channel: logit > 0 means class 1)",
        "model": {
            "encoder": cfg.model.encoder,
            "depth": cfg.model.depth,
            "width": cfg.model.width,
            "upsampling": cfg.model.upsampling,
            "pad_multiple": multiple,
            "weights_from": cfg.model.weights_from,
        },
        "source": {
            "checkpoint": source.name,
            "miou": ck.metrics.get("miou"),
            "epoch": ck.metrics.get("epoch"),
            "training_data": _source_name(cfg.data.source),
        },
        "segdemo_version": segdemo.__version__,
        "torch_version": torch.__version__,
        "opset": OPSET if fmt == "onnx" else None,
    }


def check_export(model: nn.Module, model_path: Path, fmt: str, sizes: list[tuple[int, int]]) -> float | None:
    """Largest |exported - PyTorch| logit on fixed random (1, 3, H, W) inputs of the given (H, W) sizes."""
    if fmt == "onnx":
        if importlib.util.find_spec("onnxruntime") is None:
            return None
        import onnxruntime as ort

        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        run = lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0])  # noqa: E731
    else:
        run = torch.jit.load(str(model_path), map_location="cpu")
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for h, w in sizes:
        x = torch.randn(1, 3, h, w, generator=gen)
        with torch.inference_mode():
            ref, got = model(x), run(x)
        if got.shape != ref.shape:
            return float("inf")
        worst = max(worst, float((got - ref).abs().max()))
    return worst


def _export_onnx(wrapped: nn.Module, example: torch.Tensor, path: Path) -> None:
    """ONNX through torch's TorchScript-based exporter (dynamo=False), opset 17, H, W and N dynamic."""
    # Why not dynamo=True, torch 2.13's default: it needs the onnxscript package (and onnx-ir) besides onnx,
    # exports many times slower (bench/README.md), writes the weights to a second .data file
    # and fixes the batch at 1 unless told otherwise. Tried: with onnxscript installed, it matches PyTorch too.
    # The TorchScript-based exporter is deprecated but present and tested in torch 2.13 (pinned in
    # requirements.txt); when a torch release removes it, switch to dynamo=True with dynamic_shapes and add
    # onnxscript to the export extra. tests/test_export.py checks either way that odd sizes match PyTorch.
    axes = {0: "batch", 2: "height", 3: "width"}
    with torch.no_grad():
        torch.onnx.export(
            wrapped,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": axes, "logits": axes},
            do_constant_folding=True,
        )


def _export_torchscript(wrapped: nn.Module, example: torch.Tensor, path: Path) -> None:
    """TorchScript by tracing: the trace records the size arithmetic, so H, W and N stay free."""
    # torch.jit.script cannot compile the net (model.py uses zip(strict=...) and untyped helpers); a trace of
    # PaddedModel needs no change to the net. torch 2.13 marks torch.jit deprecated but loads and runs it.
    with torch.no_grad():
        traced = torch.jit.trace(wrapped, (example,), check_trace=False)
    torch.jit.save(traced, str(path))


@contextlib.contextmanager
def _quiet():
    """Hide the exporters' deprecation and 'trace might be incorrect' warnings, which PaddedModel answers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*(deprecated|legacy TorchScript-based ONNX export).*")
        yield
