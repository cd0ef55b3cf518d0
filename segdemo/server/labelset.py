"""A dataset labelled in the browser: one session's photos and class-id masks on disk, written out as the
folder dataset the rest of segdemo reads (images/ + masks/ + classes.json, zipped).

Each owner (a browser's token) has one set, in a folder of its own named by a hash of the token, never the
token: `<root>/<sha256 of the owner>/` holds set.json (classes, photos, per-class pixel counts),
photos/<id>.jpg (upright RGB, longest side at most LABEL_MAX_SIDE) and masks/<id>.png (palette PNGs whose
index is the class id, 255 = unlabelled, which training ignores). A set untouched for ttl_s is deleted,
as finished runs are; only folders that look like ours are ever removed.

Painting happens in a browser canvas (gradio's ImageEditor): mask_from_layers() turns its RGBA layers into
class ids by each painted pixel's nearest class colour, and layer_from_mask() turns a saved mask back into
a layer to paint on. Nothing here imports gradio.
"""

from __future__ import annotations

import io
import json
import logging
import re
import secrets
import shutil
import threading
import time
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segdemo.atomic import replace_file
from segdemo.core.fill import kept_share
from segdemo.data.base import IGNORE, ClassSet
from segdemo.errors import DataError, LimitError
from segdemo.imageio import load_image, load_rgba
from segdemo.server.tokens import hash_owner

log = logging.getLogger(__name__)

MIN_CLASSES, MAX_CLASSES = 2, 5
MAX_NAME = 40  # characters in a class name
MAX_PHOTOS = 30  # photos in one set: a handful is the point, and every one is painted by hand
MIN_SIDE = 16  # pixels; smaller is no photo to paint on
# Photos are shrunk to this: plenty to paint on, and the net sees 64-256 px anyway. The editor sends its photo
# back to the server several times per event (ui/label_tab.py), so every pixel here costs upload bytes.
LABEL_MAX_SIDE = 384
MIN_TO_TRAIN = 2  # labelled photos: one to train on and one to validate on, at the very least
# One colour per class, in class order, picked to stand out on photos (no near-black, no near-white).
LABEL_COLORS = ((0, 130, 200), (230, 25, 75), (60, 180, 75), (255, 200, 0), (145, 30, 180))
BRUSH_ALPHA = 0.6  # the brush paints see-through, so the photo stays visible under the paint
ALPHA_MIN = 64  # a layer pixel with less alpha than this is unpainted (anti-aliased fringes, eraser edges)
COLOR_TOLERANCE = 48  # RGB distance within which a painted colour counts as a class colour
STRAY_SHARE = 0.02  # more painted pixels than this far from every class colour: refuse, don't guess
SAME_PHOTO_DIFF = 6.0  # mean grey levels between 16x16 thumbnails: a photo and its re-encoding differ by ~1
DEFAULT_CLASSES = ("background", "object")
DATASET_FOLDER = "segdemo-labels"  # the folder inside the zip
SET_FILE = "set.json"
NO_SUCH_PHOTO = "no such photo in your labelled set (it may have expired or been removed); choose one from the list"
SWEEP_EVERY_S = 60.0
# Beside each photo's saved mask (masks/), the assisted labelling keeps (same palette PNGs, same id): the
# student's own strokes at the last save (what the editor gives back to paint on), the fill or guess the page
# shows now and Save stores (cleared by the save), and the model's first guess (how much of it was kept).
STROKES, PROPOSAL, GUESS = "strokes", "proposals", "guesses"
_ID = re.compile(r"^[0-9a-f]{8}$")
_OWNER_DIR = re.compile(r"^[0-9a-f]{64}$")
README = """Labelled in segdemo's Label tab.

images/NAME.jpg  a photo
masks/NAME.png   its mask: a palette PNG whose pixel values are class ids (0, 1, ...), in the order of
                 classes.json; 255 means unlabelled, which training ignores (the palette colours are
                 only for looking at it)
classes.json     the class names and their colours

Train on it: python -m segdemo train --data THIS.zip --out runs/mine   (or upload the zip in the Train tab)
"""


@dataclass(frozen=True)
class Photo:
    id: str
    stem: str  # its file name in the dataset, without extension
    name: str  # the name it was uploaded with (shown to its owner only)
    width: int
    height: int
    counts: tuple[int, ...]  # labelled pixels per class; all zero until painted
    kept: float | None = None  # the share of the saved pixels the model had guessed right, if it guessed

    @property
    def labelled(self) -> bool:
        return sum(self.counts) > 0


@dataclass(frozen=True)
class Progress:
    labelled: int
    total: int
    class_pixels: tuple[int, ...]  # over every labelled photo

    def __str__(self) -> str:
        return f"{self.labelled} of {self.total} labelled"


# -- class names and pixels -------------------------------------------------------------------------------


def parse_class_names(text) -> list[str]:
    """Class names from the page: comma- or newline-separated (or a list), checked; DataError says what to fix."""
    if isinstance(text, list | tuple):
        parts = [str(p) for p in text]
    elif isinstance(text, str):
        parts = re.split(r"[,\n]", text)
    else:
        raise DataError("give the class names as text, separated by commas")
    names = [unicodedata.normalize("NFC", p).strip() for p in parts]
    names = [n for n in names if n]
    if not MIN_CLASSES <= len(names) <= MAX_CLASSES:
        raise DataError(
            f"name between {MIN_CLASSES} and {MAX_CLASSES} classes, separated by commas (you gave {len(names)}); "
            "e.g. background, cat"
        )
    for n in names:
        if len(n) > MAX_NAME:
            raise DataError(f"class names are at most {MAX_NAME} characters; shorten {n[:MAX_NAME]!r}…")
        if any(unicodedata.category(ch).startswith("C") for ch in n):
            raise DataError(f"class name {n!r} holds control characters; use letters, digits and spaces")
    folded = [n.casefold() for n in names]
    dup = next((n for i, n in enumerate(names) if folded.index(folded[i]) != i), None)
    if dup is not None:
        raise DataError(f"two classes are called {dup!r}; every class needs its own name")
    return names


def class_set(names) -> ClassSet:
    return ClassSet(tuple(names), LABEL_COLORS[: len(names)])


def mask_from_layers(layers: list[np.ndarray], shape: tuple[int, int], colors) -> np.ndarray:
    """Painted RGBA layers (bottom first, each (H, W, 4) uint8 at the photo's size) -> (H, W) uint8 class ids.

    A pixel is painted where a layer's alpha is at least ALPHA_MIN; its class is the class colour nearest to
    its RGB (layers store colour un-premultiplied, so a see-through brush keeps its exact colour). A higher
    layer's paint covers a lower one's. Unpainted pixels are IGNORE. A few stray colours (anti-aliased
    edges where two classes meet) are left unpainted; many mean the layer was not painted with the class
    colours, and are refused.
    """
    h, w = shape
    ids = np.full((h, w), IGNORE, np.uint8)
    palette = np.array(colors, np.int32).reshape(-1, 3)
    for i, layer in enumerate(layers):
        if not (isinstance(layer, np.ndarray) and layer.ndim == 3 and layer.shape[2] == 4 and layer.dtype == np.uint8):
            raise DataError("the painted layer is not an RGBA picture; paint on the photo in the Label tab")
        if layer.shape[:2] != (h, w):
            lh, lw = layer.shape[:2]
            raise DataError(
                f"the painted layer is {lw}x{lh} pixels but the photo is {w}x{h}; open the photo again and "
                "paint on it (masks must match their photo's size)"
            )
        painted = layer[..., 3] >= ALPHA_MIN
        n = int(painted.sum())
        if n == 0:
            continue
        rgb = layer[..., :3][painted].astype(np.int32)
        dist = ((rgb[:, None, :] - palette[None, :, :]) ** 2).sum(axis=2)  # (N, K) squared RGB distances
        nearest = dist.argmin(axis=1)
        close = dist[np.arange(n), nearest] <= COLOR_TOLERANCE**2
        stray = n - int(close.sum())
        if stray > max(16, STRAY_SHARE * n):
            c = tuple(int(v) for v in rgb[~close][0])
            raise DataError(
                f"{stray} painted pixels of layer {i + 1} have colours that belong to no class (e.g. RGB {c}); "
                "paint with the class colours only"
            )
        cls = np.where(close, nearest, IGNORE).astype(np.uint8)
        covered = ids[painted]
        ids[painted] = np.where(close, cls, covered)  # a stray pixel leaves what lies below it
    return ids


def layer_from_mask(mask: np.ndarray, colors) -> np.ndarray:
    """(H, W) class ids -> (H, W, 4) RGBA layer: each labelled pixel in its class colour at BRUSH_ALPHA."""
    lut = np.zeros((256, 4), np.uint8)
    a = round(255 * BRUSH_ALPHA)
    for i, c in enumerate(colors):
        lut[i] = (*c, a)
    return lut[mask]


def _stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(str(name)).stem).strip("_")[:40]
    return stem or "photo"


def _mask_png(mask: np.ndarray, colors) -> bytes:
    pal = [0] * 768
    for i, c in enumerate(colors):
        pal[3 * i : 3 * i + 3] = c
    pal[3 * IGNORE : 3 * IGNORE + 3] = (255, 255, 255)
    h, w = mask.shape
    im = Image.frombytes("P", (w, h), np.ascontiguousarray(mask).tobytes())
    im.putpalette(pal)
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=False)
    return buf.getvalue()


# -- one owner's set --------------------------------------------------------------------------------------


class LabelSet:
    """One owner's photos and masks. Every method takes the set's lock: two tabs of one browser may call
    at once. Methods raise DataError / LimitError with a sentence for the page."""

    def __init__(self, folder: Path, lock: threading.Lock):
        self.folder = folder
        self._lock = lock

    # reading

    def _doc(self) -> dict:
        try:
            doc = json.loads((self.folder / SET_FILE).read_text())
            if isinstance(doc, dict):
                return doc
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            log.warning("unreadable %s; starting the set afresh", self.folder / SET_FILE, exc_info=True)
        return {"classes": list(DEFAULT_CLASSES), "photos": []}

    def _write(self, doc: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        replace_file(self.folder / SET_FILE, json.dumps(doc).encode(), fsync=False)

    @staticmethod
    def _photo(d: dict) -> Photo:
        kept = d.get("kept")
        return Photo(
            d["id"], d["stem"], d["name"], int(d["width"]), int(d["height"]), tuple(d["counts"]),
            float(kept) if isinstance(kept, int | float) else None,
        )  # fmt: skip

    def classes(self) -> ClassSet:
        with self._lock:
            return class_set(self._doc()["classes"])

    def photos(self) -> list[Photo]:
        with self._lock:
            return [self._photo(p) for p in self._doc()["photos"]]

    def progress(self) -> Progress:
        with self._lock:
            doc = self._doc()
        photos = [self._photo(p) for p in doc["photos"]]
        k = len(doc["classes"])
        pixels = np.zeros(k, np.int64)
        for p in photos:
            pixels[: len(p.counts)] += np.array(p.counts[:k], np.int64)
        return Progress(sum(p.labelled for p in photos), len(photos), tuple(int(v) for v in pixels))

    def get(self, photo_id) -> Photo:
        """The photo with this id, or DataError: the same sentence for a made-up id and another owner's."""
        if isinstance(photo_id, str) and _ID.match(photo_id):
            with self._lock:
                for p in self._doc()["photos"]:
                    if p["id"] == photo_id:
                        return self._photo(p)
        raise DataError(NO_SUCH_PHOTO)

    def photo_file(self, photo: Photo) -> Path:
        """The stored photo: a JPEG, upright, at most LABEL_MAX_SIDE a side."""
        return self.folder / "photos" / f"{photo.id}.jpg"

    def image(self, photo: Photo) -> np.ndarray:
        return load_image(self.photo_file(photo), photo.name)

    def shows(self, photo: Photo, src) -> bool:
        """Whether a picture from the browser (the editor's background) is this photo: the editor sends the
        photo it shows with the paint, and while it is still loading another photo that is the previous one,
        whose paint must not be saved onto this one. Compared as 16x16 thumbnails, so the re-encoding of a
        photo (JPEG here, PNG in the browser) does not matter and another photo never passes."""
        try:
            seen = load_image(src, "the photo in the editor", max_pixels=photo.width * photo.height)
        except DataError:
            return False
        if seen.shape[:2] != (photo.height, photo.width):
            return False
        a, b = (cv2.resize(x, (16, 16), interpolation=cv2.INTER_AREA) for x in (seen, self.image(photo)))
        return float(np.abs(a.astype(np.int16) - b).mean()) <= SAME_PHOTO_DIFF

    def mask(self, photo: Photo) -> np.ndarray:
        """Its class ids, all IGNORE when it has not been painted yet."""
        path = self.folder / "masks" / f"{photo.id}.png"
        if not path.is_file():
            return np.full((photo.height, photo.width), IGNORE, np.uint8)
        with Image.open(path) as im:
            return np.array(im, np.uint8)

    def extra(self, photo: Photo, kind: str) -> np.ndarray | None:
        """One of the masks kept beside the saved one (STROKES, PROPOSAL, GUESS), or None when there is none."""
        path = self._extra_path(photo.id, kind)
        if not path.is_file():
            return None
        with Image.open(path) as im:
            ids = np.array(im, np.uint8)
        return ids if ids.shape == (photo.height, photo.width) else None

    def _extra_path(self, photo_id: str, kind: str) -> Path:
        if kind not in (STROKES, PROPOSAL, GUESS) or not _ID.match(photo_id):
            raise ValueError(f"no such mask kind {kind!r} for {photo_id!r}")
        return self.folder / kind / f"{photo_id}.png"

    def shown(self, photo: Photo) -> np.ndarray | None:
        """What the page shows for this photo and Save builds on: the fill or guess not saved yet, else the saved
        mask when it was filled (saved with strokes kept apart); None when only strokes count."""
        proposal = self.extra(photo, PROPOSAL)
        if proposal is not None:
            return proposal
        if photo.labelled and self._extra_path(photo.id, STROKES).is_file():
            return self.mask(photo)
        return None

    def strokes(self, photo: Photo) -> np.ndarray:
        """The student's own strokes to paint on: kept apart since the photo was filled, else its saved mask."""
        strokes = self.extra(photo, STROKES)
        return strokes if strokes is not None else self.mask(photo)

    # changing

    def put_extra(self, photo_id: str, kind: str, mask: np.ndarray) -> None:
        """Keep a fill, guess or strokes beside the photo's mask (its own file, this set's folder, checked)."""
        photo = self.get(photo_id)
        self._check_mask(photo, mask)
        with self._lock:
            k = len(self._doc()["classes"])
            path = self._extra_path(photo.id, kind)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            replace_file(path, _mask_png(mask, LABEL_COLORS[:k]), fsync=False)

    def drop_extra(self, photo_id: str, *kinds: str) -> None:
        for kind in kinds:
            self._extra_path(photo_id, kind).unlink(missing_ok=True)

    def _check_mask(self, photo: Photo, mask: np.ndarray) -> None:
        if not (isinstance(mask, np.ndarray) and mask.dtype == np.uint8 and mask.shape == (photo.height, photo.width)):
            raise DataError(f"a mask for {photo.name} must be {photo.width}x{photo.height} class ids")

    def set_classes(self, names: list[str]) -> ClassSet:
        """Rename the classes, add some, or drop unused ones at the end (a painted class cannot be dropped)."""
        names = parse_class_names(names)
        with self._lock:
            doc = self._doc()
            for p in doc["photos"]:
                used = [i for i, n in enumerate(p["counts"]) if n and i >= len(names)]
                if used:
                    old = doc["classes"][used[0]] if used[0] < len(doc["classes"]) else f"class {used[0]}"
                    raise DataError(
                        f"{p['name']} has pixels painted as {old!r} (class {used[0] + 1}); erase them, or keep "
                        f"{used[0] + 1} classes"
                    )
            for p in doc["photos"]:
                p["counts"] = (list(p["counts"]) + [0] * len(names))[: len(names)]
            doc["classes"] = names
            self._write(doc)
            self._recolor_masks(doc)
            for kind in (PROPOSAL, GUESS):  # made for the old classes: the page makes them afresh
                shutil.rmtree(self.folder / kind, ignore_errors=True)
            return class_set(names)

    def _recolor_masks(self, doc: dict) -> None:
        """Masks carry the class colours in their palette: keep them in step with the class list."""
        colors = LABEL_COLORS[: len(doc["classes"])]
        for p in doc["photos"]:
            for path in (self.folder / "masks" / f"{p['id']}.png", self.folder / STROKES / f"{p['id']}.png"):
                if not path.is_file():
                    continue
                with Image.open(path) as im:
                    ids = np.array(im, np.uint8)
                replace_file(path, _mask_png(ids, colors), fsync=False)

    def add_photo(self, src, name: str) -> Photo:
        """Decode (size and format checked before decoding), turn upright, shrink to LABEL_MAX_SIDE, store."""
        name = Path(str(name)).name[:120] or "photo"
        with self._lock:
            if len(self._doc()["photos"]) >= MAX_PHOTOS:
                raise LimitError(
                    f"your labelled set has {MAX_PHOTOS} photos, the most it can hold; remove some before adding more"
                )
        image = load_image(src, name)  # DataError for a bomb, a fake, a truncated file, a huge picture
        h, w = image.shape[:2]
        if min(h, w) < MIN_SIDE:
            raise DataError(f"{name} is {w}x{h} pixels, too small to paint on; use photos of {MIN_SIDE}+ px a side")
        f = LABEL_MAX_SIDE / max(h, w)
        if f < 1:
            size = (max(MIN_SIDE, round(w * f)), max(MIN_SIDE, round(h * f)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            h, w = image.shape[:2]
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "JPEG", quality=95)
        with self._lock:
            doc = self._doc()
            if len(doc["photos"]) >= MAX_PHOTOS:  # another tab filled it meanwhile
                raise LimitError(
                    f"your labelled set has {MAX_PHOTOS} photos, the most it can hold; remove some before adding more"
                )
            taken = {p["stem"] for p in doc["photos"]}
            base, stem, n = _stem(name), _stem(name), 2
            while stem in taken:
                stem, n = f"{base}-{n}", n + 1
            photo_id = secrets.token_hex(4)
            (self.folder / "photos").mkdir(parents=True, exist_ok=True, mode=0o700)
            replace_file(self.folder / "photos" / f"{photo_id}.jpg", buf.getvalue(), fsync=False)
            entry = {"id": photo_id, "stem": stem, "name": name, "width": w, "height": h}
            entry["counts"] = [0] * len(doc["classes"])
            doc["photos"].append(entry)
            self._write(doc)
            return self._photo(entry)

    def remove_photo(self, photo_id: str) -> None:
        photo = self.get(photo_id)
        with self._lock:
            doc = self._doc()
            doc["photos"] = [p for p in doc["photos"] if p["id"] != photo.id]
            self._write(doc)
            (self.folder / "photos" / f"{photo.id}.jpg").unlink(missing_ok=True)
            (self.folder / "masks" / f"{photo.id}.png").unlink(missing_ok=True)
            self.drop_extra(photo.id, STROKES, PROPOSAL, GUESS)

    def save_mask(self, photo_id: str, mask: np.ndarray, kept: float | None = None) -> Photo:
        """Store a photo's class ids (0..K-1, IGNORE); DataError for a wrong size or an unknown class. `kept`:
        how much of the model's guess the mask kept, shown in the progress (None leaves what was recorded)."""
        photo = self.get(photo_id)
        self._check_mask(photo, mask)
        with self._lock:
            doc = self._doc()
            k = len(doc["classes"])
            counts = np.bincount(mask.ravel(), minlength=256)
            bad = [v for v in np.flatnonzero(counts).tolist() if v >= k and v != IGNORE]
            if bad:
                raise DataError(f"the mask holds class ids {bad[:5]} but the set has {k} classes (0..{k - 1})")
            entry = next((p for p in doc["photos"] if p["id"] == photo.id), None)
            if entry is None:  # removed by another tab meanwhile
                raise DataError(NO_SUCH_PHOTO)
            (self.folder / "masks").mkdir(parents=True, exist_ok=True, mode=0o700)
            replace_file(self.folder / "masks" / f"{photo.id}.png", _mask_png(mask, LABEL_COLORS[:k]), fsync=False)
            entry["counts"] = [int(c) for c in counts[:k]]
            if kept is not None:
                entry["kept"] = round(float(kept), 4)
            self._write(doc)
            return self._photo(entry)

    def strokes_from_layers(self, photo: Photo, layer_files: list, max_layers: int = 4) -> np.ndarray:
        """The browser's painted layers (files, checked like any upload, each capped at the photo's pixels) as
        class ids, IGNORE unpainted."""
        if len(layer_files) > max_layers:
            raise DataError(f"{len(layer_files)} layers sent; paint on the one layer the Label tab gives")
        cap = photo.width * photo.height  # a layer of another size is refused anyway: never decode a big one
        layers = [load_rgba(f, f"layer {i + 1}", max_pixels=cap) for i, f in enumerate(layer_files)]
        return mask_from_layers(layers, (photo.height, photo.width), self.classes().colors)

    def save_layers(self, photo_id: str, layer_files: list, max_layers: int = 4) -> Photo:
        """Read the browser's painted layers and store the mask they make: the strokes alone, or, when the page
        shows a fill or the model's guess for the photo (shown()), that mask with the strokes on top, the
        strokes then kept apart to paint on again. A guess records how much of it the saved mask kept."""
        photo = self.get(photo_id)
        strokes = self.strokes_from_layers(photo, layer_files, max_layers)
        shown = self.shown(photo)
        if shown is None:
            self.drop_extra(photo.id, STROKES)
            return self.save_mask(photo.id, strokes)
        mask = np.where(strokes != IGNORE, strokes, shown).astype(np.uint8)
        guess = self.extra(photo, GUESS)
        kept = kept_share(guess, mask) if guess is not None else None
        saved = self.save_mask(photo.id, mask, kept=kept)
        self.put_extra(photo.id, STROKES, strokes)
        self.drop_extra(photo.id, PROPOSAL, GUESS)
        return saved

    # reading it back out

    def write_zip(self, dest: Path) -> Path:
        """The labelled photos as a zipped folder dataset (images/, masks/, classes.json) at dest."""
        with self._lock:
            doc = self._doc()
            photos = [self._photo(p) for p in doc["photos"]]
            labelled = [p for p in photos if p.labelled]
            if not labelled:
                raise DataError("no photo is labelled yet: paint at least one class on a photo and save it")
            classes = class_set(doc["classes"])
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".part")
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
                root = DATASET_FOLDER
                zf.writestr(f"{root}/classes.json", json.dumps(classes.to_dict(), indent=1))
                zf.writestr(f"{root}/README.txt", README)
                for p in labelled:
                    zf.write(self.folder / "photos" / f"{p.id}.jpg", f"{root}/images/{p.stem}.jpg")
                    zf.write(self.folder / "masks" / f"{p.id}.png", f"{root}/masks/{p.stem}.png")
            tmp.replace(dest)
            return dest


# -- every owner's sets ---------------------------------------------------------------------------------


class LabelStore:
    """Label sets under one root, one folder per owner (a hash of the token), swept ttl_s after their last change."""

    def __init__(self, root: str | Path, ttl_s: float = 3600):
        self.root = Path(root)
        self.ttl_s = float(ttl_s)
        self._locks = [threading.Lock() for _ in range(64)]  # striped by owner: bounded, whatever the visitors
        self._last_sweep = 0.0
        self._sweep_lock = threading.Lock()

    def for_owner(self, owner: str) -> LabelSet:
        """This owner's set (its folder is made on the first change). Sweeps expired sets now and then."""
        key = hash_owner(owner)
        self.maybe_sweep()
        return LabelSet(self.root / key, self._locks[int(key[:8], 16) % len(self._locks)])

    def maybe_sweep(self) -> None:
        now = time.monotonic()
        with self._sweep_lock:
            if now - self._last_sweep < SWEEP_EVERY_S:
                return
            self._last_sweep = now
        try:
            self.sweep()
        except Exception:  # a sweep hiccup must never fail the student's request
            log.exception("sweeping expired label sets failed")

    def sweep(self, now: float | None = None) -> int:
        """Delete sets untouched for ttl_s (only folders named like ours); return how many went."""
        now = time.time() if now is None else now
        try:
            entries = list(self.root.iterdir())
        except OSError:
            return 0
        removed = 0
        for d in entries:
            if not (_OWNER_DIR.match(d.name) and d.is_dir() and not d.is_symlink()):
                continue
            marker = d / SET_FILE
            try:
                changed = marker.stat().st_mtime if marker.is_file() else d.stat().st_mtime
            except OSError:
                continue
            if now - changed > self.ttl_s:
                shutil.rmtree(d, ignore_errors=True)
                removed += 1
        return removed
