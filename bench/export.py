"""ONNX Runtime against PyTorch: predict latency on a 512x512 image, side by side, and argmax agreement.

Both sides do the same work, image -> class-id mask at 512x512: segdemo's preprocessing (cv2 INTER_AREA to
the training size, normalise), the model, logits up-sampled bilinearly to 512x512, argmax. Only the model
call differs: the checkpoint's PyTorch model, or model.onnx from `export_model` in an onnxruntime session
with as many threads as torch uses (and no spinning between runs). Timed in interleaved rounds (one of each
per round), medians. Also timed in the same rounds, for context: each model call alone, the exported
predict_onnx.py's own pipeline (numpy resize) and Predictor.predict (which also computes probabilities, the
colour mask and the overlay).

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
import torch.nn.functional as F
from common import REPO, load, machine, median

from segdemo.data.builtin import make_sample
from segdemo.evaluate import forward_resized, logits_to_labels
from segdemo.export import export_model
from segdemo.imageio import load_image
from segdemo.predict import Predictor
from segdemo.transforms import eval_resize, to_tensor


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
    print(f"exported {Path(args.checkpoint).name} in {time.perf_counter() - t0:.1f} s to {result.model} "
          f"({result.model.stat().st_size / 2**20:.1f} MB; check: logits within {result.max_abs_diff:.1e})")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = torch.get_num_threads(), 1
    # onnxruntime's threads otherwise spin for a while after each run, starving the torch ops that follow in
    # the same process (seen: the up-sampling and PyTorch's own forward 2-10x slower in interleaved rounds)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(result.model), opts, providers=["CPUExecutionProvider"])
    script = load_script(result.script)
    meta = json.loads(result.meta.read_text())
    size = cfg.data.image_size
    print(f"model: width {cfg.model.width}, depth {cfg.model.depth}, input {size}px; "
          f"threads: torch {torch.get_num_threads()}, onnxruntime {opts.intra_op_num_threads}")

    def torch_predict(image: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return logits_to_labels(forward_resized(model, [image], cfg, device)[0])[0].numpy()

    def onnx_predict(image: np.ndarray) -> np.ndarray:
        x = to_tensor(eval_resize(image, size)[None], cfg.data.mean, cfg.data.std)
        logits = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
        logits = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
        return logits_to_labels(logits)[0].numpy()

    def script_predict(image: np.ndarray) -> np.ndarray:
        logits = session.run(None, {"image": script.preprocess(image, meta)})[0][0]
        return script.to_mask(logits, *image.shape[:2])

    x = to_tensor(eval_resize(make_sample(np.random.default_rng(1), size)[0], size)[None], cfg.data.mean,
                  cfg.data.std)

    def torch_forward():
        with torch.inference_mode():
            model(x)

    def onnx_forward():
        session.run(None, {"image": x.numpy()})

    image = make_sample(np.random.default_rng(0), args.size)[0]
    runs = {"torch": lambda: torch_predict(image), "onnx": lambda: onnx_predict(image),
            "torch_forward": torch_forward, "onnx_forward": onnx_forward,
            "script": lambda: script_predict(image), "predictor": lambda: predictor.predict(image)}
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
    print(f"{args.size}x{args.size} image -> mask, median of {args.repeats}: onnxruntime {ms['onnx']:.2f} ms, "
          f"PyTorch {ms['torch']:.2f} ms, ratio onnx/torch {ratio:.2f} | {load()}")
    print(f"model call alone at {size}px: onnxruntime {ms['onnx_forward']:.2f} ms, PyTorch {ms['torch_forward']:.2f} "
          f"ms ({ms['onnx_forward'] / ms['torch_forward']:.2f}); predict_onnx.py pipeline (numpy resize) "
          f"{ms['script']:.2f} ms; Predictor.predict {ms['predictor']:.2f} ms")

    ref = torch_predict(image)
    agreement = float((onnx_predict(image) == ref).mean())
    script_agreement = float((script_predict(image) == ref).mean())
    others = sorted((REPO / "examples").glob("shapes_*.png"))
    pets = REPO.parent / "shared" / "data" / "oxford-iiit-pet-mini" / "oxford-iiit-pet" / "images"
    others += sorted(pets.glob("*.jpg"))[:6] if pets.is_dir() else []
    worst = min(float((onnx_predict(im) == torch_predict(im)).mean()) for im in map(load_image, others))
    print(f"argmax agreement with PyTorch: onnxruntime {agreement:.6f} on the {args.size}px image, lowest "
          f"{worst:.6f} over {len(others)} more images (examples{', Oxford Pet photos' if pets.is_dir() else ''}); "
          f"predict_onnx.py {script_agreement:.6f}")
    print(f"onnx_ms={ms['onnx']:.2f} torch_ms={ms['torch']:.2f} ratio={ratio:.2f} argmax_agreement={agreement:.6f} "
          f'cpu="{cpu}"')


if __name__ == "__main__":
    main()
