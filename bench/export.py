"""ONNX Runtime against PyTorch: predict latency on a 512x512 image, side by side, and argmax agreement.

Both sides turn the image into a class-id mask at 512x512, the way each is meant to be used:
- ONNX: the exported predict_onnx.py's own functions (numpy INTER_AREA resize, normalise, model.onnx in an
  onnxruntime session, numpy bilinear up-sampling, argmax): what a user of `segdemo export` runs;
- PyTorch: segdemo's prediction path (cv2 resize, normalise, the model, F.interpolate, argmax), i.e.
  Predictor.predict without its probabilities, colour mask and overlay.
onnxruntime gets as many threads as torch, and no spinning between runs. Interleaved rounds (one of each per
round), medians. Also timed in the same rounds: each model call alone at the training size, and
Predictor.predict in full.

    python bench/export.py [--checkpoint checkpoints/shapes_unet.safetensors] [--size 512] [--repeats 50]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO, load, machine, median

from segdemo.core.evaluate import forward_resized, logits_to_labels
from segdemo.core.predict import Predictor
from segdemo.core.transforms import eval_resize, to_tensor
from segdemo.data.builtin import make_sample
from segdemo.export.exporter import export_model
from segdemo.imageio import load_image


def cpu_name() -> str:
    """lscpu's model name (the CPU these timings belong to)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return "unknown CPU"


def load_script(path: Path):
    """The exported predict_onnx.py as a module, to time its pipeline without starting a process."""
    spec = importlib.util.spec_from_file_location("predict_onnx", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "shapes_unet.safetensors"))
    p.add_argument("--size", type=int, default=512, help="side of the square RGB test image")
    p.add_argument("--repeats", type=int, default=50)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="segdemo-bench-export-") as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, out_dir: Path) -> None:
    import onnxruntime as ort

    cpu = cpu_name()
    print(f"CPU: {cpu} | {machine()} | onnxruntime {ort.__version__} | {load()}", flush=True)

    predictor = Predictor.from_path(args.checkpoint)
    model, cfg, device = predictor.model, predictor.config, predictor.device
    t0 = time.perf_counter()
    result = export_model(args.checkpoint, out_dir, fmt="onnx")
    print(
        f"exported {Path(args.checkpoint).name} in {time.perf_counter() - t0:.1f} s to {result.model} "
        f"({result.model.stat().st_size / 2**20:.1f} MB; check: logits within {result.max_abs_diff:.1e})"
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = torch.get_num_threads(), 1
    # onnxruntime's threads otherwise spin for a while after each run, starving the torch ops that follow in
    # the same process (seen: PyTorch's forward several times slower in interleaved rounds). Not fed from torch:
    # PyTorch's argmax over the classes of NCHW-contiguous (1, 4, 512, 512) logits took 42-48 ms here, against
    # 3-4 ms on the channels_last logits that segdemo's own path produces, so the ONNX side stays in numpy.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(result.model), opts, providers=["CPUExecutionProvider"])
    script = load_script(result.script)
    meta = json.loads(result.meta.read_text())
    size = cfg.data.image_size
    print(
        f"model: width {cfg.model.width}, depth {cfg.model.depth}, input {size}px; "
        f"threads: torch {torch.get_num_threads()}, onnxruntime {opts.intra_op_num_threads}"
    )

    def torch_predict(image: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return logits_to_labels(forward_resized(model, [image], cfg, device)[0])[0].numpy()

    def script_predict(image: np.ndarray) -> np.ndarray:
        logits = session.run(None, {"image": script.preprocess(image, meta)})[0][0]
        return script.to_mask(logits, *image.shape[:2])

    x = to_tensor(
        eval_resize(make_sample(np.random.default_rng(1), size)[0], cfg.data)[None], cfg.data.mean, cfg.data.std
    )

    def torch_forward():
        with torch.inference_mode():
            model(x)

    def onnx_forward():
        session.run(None, {"image": x.numpy()})

    image = make_sample(np.random.default_rng(0), args.size)[0]
    runs = {
        "torch": lambda: torch_predict(image),
        "onnx": lambda: script_predict(image),
        "torch_forward": torch_forward,
        "onnx_forward": onnx_forward,
        "predictor": lambda: predictor.predict(image),
    }
    for _ in range(3):
        for fn in runs.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):  # interleaved: each round times one of each
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    ms = {k: 1e3 * median(v) for k, v in times.items()}
    ratio = ms["onnx"] / ms["torch"]
    print(
        f"{args.size}x{args.size} image -> mask, median of {args.repeats}: predict_onnx.py with onnxruntime "
        f"{ms['onnx']:.2f} ms, PyTorch {ms['torch']:.2f} ms, ratio onnx/torch {ratio:.2f} | {load()}"
    )
    print(
        f"model call alone at {size}px: onnxruntime {ms['onnx_forward']:.2f} ms, PyTorch "
        f"{ms['torch_forward']:.2f} ms (ratio {ms['onnx_forward'] / ms['torch_forward']:.2f}); "
        f"Predictor.predict in full {ms['predictor']:.2f} ms"
    )

    agreement = float((script_predict(image) == torch_predict(image)).mean())
    others = sorted((REPO / "examples").glob("shapes_*.png"))
    pets = REPO.parent / "shared" / "data" / "oxford-iiit-pet-mini" / "oxford-iiit-pet" / "images"
    others += sorted(pets.glob("*.jpg"))[:6] if pets.is_dir() else []
    worst = min(float((script_predict(im) == torch_predict(im)).mean()) for im in map(load_image, others))
    print(
        f"argmax agreement with PyTorch: {agreement:.6f} on the {args.size}px image, lowest {worst:.6f} over "
        f"{len(others)} more images (examples{', Oxford Pet photos' if pets.is_dir() else ''})"
    )

    def same_input(im: np.ndarray) -> float:
        """The exported model and PyTorch on one and the same input (segdemo's resize and normalisation): the
        model's own agreement, without the script's numpy resize, which can differ from OpenCV's by a grey level."""
        xi = to_tensor(eval_resize(im, cfg.data)[None], cfg.data.mean, cfg.data.std)
        with torch.inference_mode():
            ref = model(xi).argmax(1).numpy()
        return float((session.run(None, {"image": xi.numpy()})[0].argmax(1) == ref).mean())

    model_worst = min(same_input(im) for im in [image, *map(load_image, others)])
    print(f"argmax agreement of the model alone, same input: lowest {model_worst:.6f} over {len(others) + 1} images")
    print(
        f"onnx_ms={ms['onnx']:.2f} torch_ms={ms['torch']:.2f} ratio={ratio:.2f} argmax_agreement={agreement:.6f} "
        f'model_argmax_agreement={model_worst:.6f} cpu="{cpu}"'
    )


if __name__ == "__main__":
    main()
