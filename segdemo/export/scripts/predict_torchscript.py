"""Segment images with an exported segdemo model. Needs only numpy, Pillow and torch (no segdemo).

    python predict_torchscript.py photo.jpg [more.png ...] [--out preds/]

For each image it writes NAME_mask.png (the class id of each pixel: 0, 1, 2...), NAME_color.png (each
class in its colour) and NAME_overlay.png (the photo with the colours over it), all at the image's own
size. It reads model.torchscript.pt and meta.json from its
own folder. A TorchScript file is a program: load only ones you trust (an ONNX export is plain data).
The steps are the ones segdemo's Predict uses: resize to the training scale (aspect ratio kept, as meta.json's
preprocessing says), normalise, run the model on the whole image (or in overlapping windows when meta.json
sets one), resize the class scores back to the image's size, take the best class per pixel.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent


def load_rgb(path):
    """The image as an (H, W, 3) uint8 RGB array, turned upright by its EXIF tag, transparency shown on white."""
    image = ImageOps.exif_transpose(Image.open(path))
    if image.mode != "RGB":
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    return np.asarray(image.convert("RGB"))


def area_weights(n_in, n_out):
    """(n_out, n_in) matrix that resizes one axis the way OpenCV's INTER_AREA does."""
    if n_out <= n_in:  # shrinking: each output pixel is the mean of the input it covers, partial pixels in part
        scale = n_in / n_out
        start = np.arange(n_out)[:, None] * scale
        j = np.arange(n_in)[None, :]
        overlap = np.minimum(start + scale, j + 1) - np.maximum(start, j)
        return np.clip(overlap, 0, None) / scale
    # growing: each output pixel copies one input pixel, blending two only where it straddles their border
    i = np.arange(n_out)
    j = np.floor(i * n_in / n_out).astype(int)
    f = (i + 1) - (j + 1) * (n_out / n_in)
    f = np.where(f <= 0, 0.0, f - np.floor(f))
    f[j >= n_in - 1] = 0.0
    w = np.zeros((n_out, n_in))
    w[i, j] += 1 - f
    w[i, np.minimum(j + 1, n_in - 1)] += f
    return w


def scaled_size(h, w, p):
    """(height, width) the model sees an h x w image at: meta.json's preprocessing "resize" rule."""
    s = p["image_size"]
    if p.get("resize_mode", "square") == "square":
        return s, s
    f = s / (min(h, w) if p["resize_mode"] == "short" else max(h, w))
    f = min(f, p["max_aspect"] * s / max(h, w))
    return max(1, round(h * f)), max(1, round(w * f))


def area_taps(n_in, n_out):
    """OpenCV's INTER_AREA table for shrinking one axis by a factor that is not a whole number, computed as it
    computes it: for each output index, its (input index, float32 weight) pairs in order."""
    scale = 1.0 / (n_out / n_in)
    taps = []
    for d in range(n_out):
        f1 = d * scale
        f2 = f1 + scale
        cell = min(scale, n_in - f1)
        s2 = min(int(np.floor(f2)), n_in - 1)
        s1 = min(int(np.ceil(f1)), s2)
        row = [(s1 - 1, (s1 - f1) / cell)] if s1 - f1 > 1e-3 else []
        row += [(s, 1.0 / cell) for s in range(s1, s2)]
        if f2 - s2 > 1e-3:
            row.append((s2, min(f2 - s2, 1.0, cell) / cell))
        taps.append([(s, np.float32(w)) for s, w in row])
    return taps


def shrink_like_opencv(image, h, w):
    """(H, W, 3) uint8 -> (h, w, 3) uint8, h <= H and w <= W: float32 sums in OpenCV's order (along each row,
    then across rows), rounded half to even. Equal to cv2.resize(INTER_AREA) bit for bit, where an exact sum
    differs by a grey level at halves, which flips borderline pixels of a sensitive model."""
    src = image.astype(np.float32)
    out = np.zeros((h, w, image.shape[2]), np.float32)
    across = np.zeros((image.shape[0], w, image.shape[2]), np.float32)
    for axis, taps, acc, data in (
        (1, area_taps(image.shape[1], w), across, src),
        (0, area_taps(image.shape[0], h), out, across),
    ):
        for r in range(max(len(t) for t in taps)):
            dst = [d for d, t in enumerate(taps) if len(t) > r]
            srcs = [taps[d][r][0] for d in dst]
            weights = np.array([taps[d][r][1] for d in dst], np.float32)
            if axis == 1:
                acc[:, dst] += data[:, srcs] * weights[None, :, None]
            else:
                acc[dst] += data[srcs] * weights[:, None, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resize_area(image, size):
    """(H, W, 3) uint8 -> (h, w, 3) uint8 for size (h, w) (or an int: square), like cv2.resize(image, (w, h),
    interpolation=cv2.INTER_AREA)."""
    h, w = (size, size) if isinstance(size, int) else size
    H, W = image.shape[:2]
    if h <= H and w <= W and (H % h or W % w):  # OpenCV's general shrinking path (whole factors have their own)
        return shrink_like_opencv(image, h, w)
    rows, cols = area_weights(image.shape[0], h), area_weights(image.shape[1], w)
    out = rows @ image.transpose(2, 0, 1).astype(np.float64) @ cols.T  # (3, h, w)
    # OpenCV rounds halves up when it halves both sides exactly, and to even otherwise
    out = np.floor(out + 0.5) if image.shape[:2] == (2 * h, 2 * w) else np.rint(out)
    return np.clip(out, 0, 255).astype(np.uint8).transpose(1, 2, 0)


def bilinear_weights(n_in, n_out):
    """(n_out, n_in) matrix of bilinear resizing with align_corners=False, as torch.nn.functional.interpolate."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0)
    j = np.minimum(np.floor(src).astype(int), n_in - 1)
    f = (src - j).astype(np.float32)
    w = np.zeros((n_out, n_in), np.float32)
    w[np.arange(n_out), j] += 1 - f
    w[np.arange(n_out), np.minimum(j + 1, n_in - 1)] += f
    return w


def preprocess(image, meta):
    """(H, W, 3) uint8 -> (1, 3, h, w) float32: resized to the training scale, scaled to 0..1, normalised."""
    p = meta["preprocessing"]
    x = resize_area(image, scaled_size(image.shape[0], image.shape[1], p))
    x = x.astype(np.float32) / np.float32(p["max_value"])
    x = (x - np.array(p["mean"], np.float32)) / np.array(p["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def run_whole_or_windowed(run, x, meta):
    """(C, h, w) class scores of x (1, 3, h, w): run(x) on the whole image, or, when meta.json's preprocessing
    sets a window smaller than the image, on overlapping window x window tiles averaged where they overlap."""
    window = meta["preprocessing"].get("window")
    h, w = x.shape[2], x.shape[3]
    if not window or max(h, w) <= window:
        return run(x)
    stride = max(1, window * 2 // 3)
    ys = [0] if h <= window else sorted({*range(0, h - window, stride), h - window})
    xs = [0] if w <= window else sorted({*range(0, w - window, stride), w - window})
    total, count = None, np.zeros((h, w), np.float32)
    for y in ys:
        for x0 in xs:
            tile = run(np.ascontiguousarray(x[:, :, y : y + window, x0 : x0 + window]))
            if total is None:
                total = np.zeros((tile.shape[0], h, w), np.float32)
            total[:, y : y + tile.shape[1], x0 : x0 + tile.shape[2]] += tile
            count[y : y + tile.shape[1], x0 : x0 + tile.shape[2]] += 1
    return total / count


def to_mask(logits, height, width):
    """(C, h, w) class scores -> (height, width) uint8 class ids: scores resized to the image, best class wins."""
    rows, cols = bilinear_weights(logits.shape[1], height), bilinear_weights(logits.shape[2], width)
    scores = rows @ logits @ cols.T  # (C, height, width)
    if scores.shape[0] == 1:  # a binary model: one score, above 0 means class 1
        return (scores[0] > 0).astype(np.uint8)
    return scores.argmax(0).astype(np.uint8)


def overlay(image, color, alpha=0.5):
    """The photo with each class's colour laid over it at `alpha` (0: photo only, 1: colour mask only)."""
    mixed = image.astype(np.float32) * (1 - alpha) + color.astype(np.float32) * alpha
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def main():
    parser = argparse.ArgumentParser(description="Segment images with the exported model beside this script.")
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--out", default=".", help="folder for the mask, colour and overlay PNGs (default: here)")
    args = parser.parse_args()

    meta = json.loads((HERE / "meta.json").read_text())
    model = torch.jit.load(str(HERE / meta["model_file"]), map_location="cpu")
    colors = np.array(meta["classes"]["colors"], np.uint8)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        image = load_rgb(path)
        with torch.inference_mode():
            logits = run_whole_or_windowed(
                lambda x: model(torch.from_numpy(x))[0].numpy(), preprocess(image, meta), meta
            )
        mask = to_mask(logits, image.shape[0], image.shape[1])
        stem = Path(path).stem
        Image.fromarray(mask).save(out / f"{stem}_mask.png")
        Image.fromarray(colors[mask]).save(out / f"{stem}_color.png")
        Image.fromarray(overlay(image, colors[mask])).save(out / f"{stem}_overlay.png")
        shares = np.bincount(mask.ravel(), minlength=len(colors)) / mask.size
        summary = ", ".join(f"{name} {100 * s:.1f}%" for name, s in zip(meta["classes"]["names"], shares))
        print(f"{path}: {image.shape[1]}x{image.shape[0]} -> {out / (stem + '_mask.png')} ({summary})")


if __name__ == "__main__":
    main()
