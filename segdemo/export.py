"""Take the model out: write a checkpoint as ONNX or TorchScript, with meta.json and a standalone predict script.

    from segdemo.export import export_model
    result = export_model("checkpoints/shapes_unet.safetensors", "exported/", fmt="onnx")
    result.model, result.meta, result.script   # model.onnx, meta.json, predict_onnx.py

The exported model is the U-Net alone, wrapped so that it takes any height and width:

    input  "image":  (N, 3, H, W) float32, RGB scaled to 0..1 then normalised with meta.json's mean and std;
                     H and W free (at least meta.json's input.min_size), N free
    output "logits": (N, C, H, W) float32 class scores at the input's size (C = 1: one binary logit, > 0 is class 1)

Prediction as segdemo does it (segdemo/evaluate.py forward_resized) resizes the image to the training scale
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
from segdemo.checkpoint import Checkpoint, load_checkpoint, resolve_checkpoint
from segdemo.data.base import IGNORE
from segdemo.errors import ConfigError, ExportError  # noqa: F401  (ExportError re-exported)
from segdemo.model import UNet
from segdemo.transforms import MAX_ASPECT

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
OPSET = 17
# refuse an export whose logits differ more than this from PyTorch's (the tests hold 1e-4; README, Export); looser so
# that another CPU's kernels never block an export, while a wrong pad or crop (whole units) is still caught
CHECK_TOLERANCE = 1e-3
INSTALL_HINT = 'pip install onnx==1.23.2 onnxruntime==1.31.1 (in a segdemo checkout: pip install ".[export]")'
_SCRIPT_DIR = Path(__file__).resolve().parent / "export_scripts"


@dataclass(frozen=True)
class ExportResult:
    """What export_model wrote: the model, meta.json and the predict script, all in one folder."""

    format: str  # "onnx" or "torchscript"
    model: Path  # model.onnx or model.torchscript.pt
    meta: Path  # meta.json: classes, colours, normalisation, sizes
    script: Path  # predict_onnx.py or predict_torchscript.py
    max_abs_diff: float | None  # exported vs PyTorch logits on a check input; None when onnxruntime is absent

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        """The three files, e.g. to offer them for download."""
        return (self.model, self.meta, self.script)


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
    return ExportResult(fmt, model_path, meta_path, script_path, diff)


def export_zip(checkpoint_path: str | Path, zip_path: str | Path, fmt: str = "onnx") -> Path:
    """export_model() into one .zip (model, meta.json, predict script) for a browser to download."""
    import zipfile

    zip_path = Path(zip_path)
    with tempfile.TemporaryDirectory(dir=zip_path.parent) as tmp:
        result = export_model(checkpoint_path, tmp, fmt)
        part = Path(tmp) / "bundle.zip"
        with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as z:
            for f in result.paths:
                z.write(f, f.name)
        os.replace(part, zip_path)
    return zip_path


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
            "training_data": cfg.data.source,
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
