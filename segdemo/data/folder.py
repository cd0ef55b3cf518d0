"""A folder dataset: images/ and masks/ paired by file stem, optionally split into train/ val/ test/.

Layouts (folder names are matched case-insensitively; val/ may also be valid/ or validation/):
    ROOT/images/0001.jpg + ROOT/masks/0001.png            (val is a seeded split of the pairs)
    ROOT/train/images, ROOT/train/masks, ROOT/val/..., ROOT/test/...   (val and test optional)
An optional ROOT/classes.json (or DataConfig.classes_file) names the classes:
    {"names": ["background", "cat"],          required, 1..254 names, class id = position
     "colors": [[0, 0, 0], [255, 0, 0]],      optional display colours; for colour-coded (RGB) masks
                                              also the exact colour of each class in the mask files
     "ignore_index": 11,                      optional label value (grey/palette masks) meaning ignore
     "ignore_color": [255, 255, 255]}         optional colour (RGB masks) meaning ignore
A bare JSON list of names is accepted too. Label value 255 always means ignore.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segdemo.data.base import (
    IGNORE,
    ClassSet,
    DataError,
    PairSource,
    Splits,
    SubsetSource,
    coverage_notes,
    stratified_split,
)
from segdemo.data.config import DataConfig
from segdemo.data.masks import Color, MaskSummary, decode_mask, is_binary_values, summarize_mask
from segdemo.imageio import IMAGE_SUFFIXES, MAX_PIXELS, align_mask, load_image_oriented, load_mask_raw

CLASSES_FILE = "classes.json"
SPLIT_ALIASES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
LAYOUT_HINT = (
    "expected ROOT/images/ and ROOT/masks/ with files paired by name (images/0001.jpg + "
    "masks/0001.png), or train/ (and optionally val/, test/) folders each holding images/ and masks/"
)
MAX_DISCOVERED_COLORS = 64  # more distinct mask colours than this means anti-aliased or JPEG masks


@dataclass(frozen=True)
class ClassesFile:
    """A parsed classes file (see the module docstring for the format)."""

    path: Path
    names: tuple[str, ...]
    colors: tuple[Color, ...] | None = None
    ignore_index: int | None = None
    ignore_color: Color | None = None


def _color(v, what: str, path: Path) -> Color:
    if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in v)):
        raise DataError(f"{path.name}: {what} must be [r, g, b] with whole numbers 0..255, got {v!r}")
    return (v[0], v[1], v[2])


def read_classes_file(path: str | Path) -> ClassesFile:
    """Parse and validate a classes JSON file; DataError names the file and the fix."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"classes file {path} does not exist; check the path") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path.name} is not valid JSON (line {e.lineno}: {e.msg}); fix it") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"classes file {path} could not be read ({e}); check it is a UTF-8 JSON file") from None
    if isinstance(d, list):
        d = {"names": d}
    if not isinstance(d, dict) or not isinstance(d.get("names"), list):
        raise DataError(f'{path.name} needs a "names" list, e.g. {{"names": ["background", "cat"]}}')
    unknown = sorted(set(d) - {"names", "colors", "ignore_index", "ignore_color", "description"})
    if unknown:
        raise DataError(f"{path.name} has unknown keys {unknown}; use names, colors, ignore_index, ignore_color")
    names = tuple(str(n) for n in d["names"])
    if not 1 <= len(names) <= 254:
        raise DataError(f"{path.name} lists {len(names)} class names; give between 1 and 254")
    colors = None
    if d.get("colors") is not None:
        if not isinstance(d["colors"], list) or len(d["colors"]) != len(names):
            n = len(d["colors"]) if isinstance(d["colors"], list) else "no"
            raise DataError(f"{path.name} has {len(names)} names but {n} colours; give one [r, g, b] per class")
        colors = tuple(_color(c, f"colour of {names[i]!r}", path) for i, c in enumerate(d["colors"]))
        if len(set(colors)) != len(colors):
            raise DataError(f"{path.name} gives two classes the same colour; every class needs its own colour")
    ignore_index = d.get("ignore_index")
    if ignore_index is not None:
        if not isinstance(ignore_index, int) or not 0 <= ignore_index <= 255:
            raise DataError(f"{path.name}: ignore_index must be a whole number 0..255, got {ignore_index!r}")
        if ignore_index < len(names):
            raise DataError(
                f"{path.name}: ignore_index {ignore_index} is also the class {names[ignore_index]!r}; "
                f"use a value of {len(names)} or more"
            )
    ignore_color = d.get("ignore_color")
    if ignore_color is not None:
        ignore_color = _color(ignore_color, "ignore_color", path)
        if colors and ignore_color in colors:
            raise DataError(f"{path.name}: ignore_color {list(ignore_color)} is also a class colour; pick another")
    return ClassesFile(path, names, colors, ignore_index, ignore_color)


def find_classes_file(root: Path, cfg: DataConfig) -> ClassesFile | None:
    """cfg.classes_file when set, else ROOT/classes.json when present."""
    if cfg.classes_file:
        return read_classes_file(Path(cfg.classes_file).expanduser())
    p = root / CLASSES_FILE
    return read_classes_file(p) if p.is_file() else None


# -- layout ---------------------------------------------------------------------------------------


@dataclass
class SplitFiles:
    """The files of one split (or of the whole pool, split "all") after pairing by stem."""

    split: str
    pairs: list[tuple[str, Path, Path]] = field(default_factory=list)  # (stem, image, mask), by stem
    unpaired_images: list[Path] = field(default_factory=list)
    unpaired_masks: list[Path] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)  # files without an image extension
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)  # two files with one stem
    case_only: list[tuple[Path, Path]] = field(default_factory=list)  # stems differing only in case


@dataclass
class Layout:
    root: Path
    splits: list[SplitFiles]

    def rel(self, p: Path) -> str:
        """A path as the user sees it in messages: relative to the dataset root."""
        try:
            return p.relative_to(self.root).as_posix()
        except ValueError:
            return str(p)

    def get(self, split: str) -> SplitFiles | None:
        return next((s for s in self.splits if s.split == split), None)


def _child_dir(parent: Path, names: Sequence[str]) -> Path | None:
    wanted = {n.lower() for n in names}
    found = sorted(p for p in parent.iterdir() if p.is_dir() and p.name.lower() in wanted)
    return found[0] if found else None


def _list_files(folder: Path) -> tuple[dict[str, Path], list[Path], list[tuple[Path, Path]]]:
    """stem -> file for image-like files; other files; pairs of files sharing a stem."""
    by_stem: dict[str, Path] = {}
    ignored, dups = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue  # dotfiles (.DS_Store) and sub-folders are not part of the dataset
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            ignored.append(p)
        elif p.stem in by_stem:
            dups.append((by_stem[p.stem], p))
        else:
            by_stem[p.stem] = p
    return by_stem, ignored, dups


def pair_files(split: str, images_dir: Path, masks_dir: Path) -> SplitFiles:
    """Pair images and masks by exact (case-sensitive) stem; the rest is reported, never shifted."""
    images, ign_i, dup_i = _list_files(images_dir)
    masks, ign_m, dup_m = _list_files(masks_dir)
    sf = SplitFiles(split, ignored=ign_i + ign_m, duplicates=dup_i + dup_m)
    for stem in sorted(images):
        if stem in masks:
            sf.pairs.append((stem, images[stem], masks[stem]))
        else:
            sf.unpaired_images.append(images[stem])
    sf.unpaired_masks = [masks[s] for s in sorted(masks) if s not in images]
    lower_masks = {p.stem.lower(): p for p in sf.unpaired_masks}
    sf.case_only = [(p, lower_masks[p.stem.lower()]) for p in sf.unpaired_images if p.stem.lower() in lower_masks]
    return sf


def find_layout(root: str | Path) -> Layout:
    """Find the images/masks folders under ROOT; DataError (naming ROOT and the layout) when absent."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"dataset folder {root} does not exist; {LAYOUT_HINT.replace('ROOT', str(root))}")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; {LAYOUT_HINT.replace('ROOT', str(root))}")
    root = root.resolve()
    split_dirs = {s: d for s, names in SPLIT_ALIASES.items() if (d := _child_dir(root, names)) is not None}
    splits = []
    if split_dirs:
        if "train" not in split_dirs:
            raise DataError(
                f"{root} has {', '.join(d.name + '/' for d in split_dirs.values())} but no train/ "
                "folder; add train/images and train/masks"
            )
        for split, d in split_dirs.items():
            images, masks = _child_dir(d, ["images"]), _child_dir(d, ["masks"])
            if images is None or masks is None:
                raise DataError(
                    f"{d} needs both images/ and masks/ folders inside; {LAYOUT_HINT.replace('ROOT', str(root))}"
                )
            splits.append(pair_files(split, images, masks))
    else:
        images, masks = _child_dir(root, ["images"]), _child_dir(root, ["masks"])
        if images is None or masks is None:
            raise DataError(f"{root} is not a dataset folder; {LAYOUT_HINT.replace('ROOT', str(root))}")
        splits.append(pair_files("all", images, masks))
    return Layout(root, splits)


# -- labels ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Labels:
    """How this dataset's mask files decode to class ids."""

    classes: ClassSet
    grey: str = "ids"  # how greyscale masks read: "ids" or "binary"
    colormap: tuple[Color, ...] | None = None  # for colour-coded masks
    ignore_value: int | None = None
    ignore_color: Color | None = None
    classes_from: str = "the dataset"

    def encoding(self, kind: str) -> str:
        return self.grey if kind == "grey" else kind

    def decode(self, raw: np.ndarray, mode: str, name: str) -> np.ndarray:
        return self._decode(raw, summarize_kind(raw, mode, self.colormap, self.ignore_color), name)

    def class_of_values(self, s: MaskSummary, name: str) -> np.ndarray:
        """Class id of each of a summary's unique values (range-checked: DataError names the file)."""
        raw = s.values.reshape(1, -1, 3) if s.kind == "rgb" else s.values.reshape(1, -1)
        return self._decode(raw, s.kind, name).reshape(-1)

    def _decode(self, raw: np.ndarray, kind: str, name: str) -> np.ndarray:
        return decode_mask(
            raw,
            self.encoding(kind),
            num_classes=self.classes.num_classes,
            colormap=self.colormap,
            ignore_value=self.ignore_value,
            ignore_color=self.ignore_color,
            name=name,
            classes_from=self.classes_from,
        )


def summarize_kind(raw: np.ndarray, mode: str, colormap, ignore_color) -> str:
    if mode in ("P", "PA"):
        return "palette"
    if raw.ndim == 2:
        return "grey"
    return summarize_mask(raw, mode, colormap, ignore_color).kind


def decide_labels(summaries: Sequence[tuple[str, MaskSummary]], cf: ClassesFile | None) -> Labels:
    """Choose classes and decoding from the classes file (if any) and what the masks hold."""
    kinds: dict[str, str] = {}
    for name, s in summaries:
        kinds.setdefault(s.kind, name)
    if "rgb" in kinds and len(kinds) > 1:
        other = next(k for k in kinds if k != "rgb")
        raise DataError(
            f"masks mix colour-coded files ({kinds['rgb']}) with {other} files ({kinds[other]}); "
            "save every mask the same way"
        )
    grey_values = set()
    for _, s in summaries:
        if s.kind == "grey":
            grey_values.update(s.values.tolist())
    binary = set(kinds) == {"grey"} and is_binary_values(sorted(grey_values), len(cf.names) if cf else None)
    if cf is not None:
        colors = cf.colors or ClassSet.default(cf.names).colors
        if "rgb" in kinds and cf.colors is None:
            raise DataError(
                f'{kinds["rgb"]} is a colour-coded mask but {cf.path.name} has no "colors"; add one '
                "[r, g, b] per class, in the colour each class has in the masks"
            )
        return Labels(
            ClassSet(cf.names, tuple(colors)),
            "binary" if binary else "ids",
            cf.colors if "rgb" in kinds else None,
            cf.ignore_index,
            cf.ignore_color,
            f"the classes file {cf.path.name}",
        )
    if binary:
        return Labels(ClassSet.default(["background", "foreground"]), "binary")
    if "rgb" in kinds:
        keys = sorted(
            {(int(c[0]), int(c[1]), int(c[2])) for _, s in summaries for c in s.values},
            key=lambda c: (c != (0, 0, 0), c),
        )  # black first: it is usually the background
        if len(keys) > MAX_DISCOVERED_COLORS:
            raise DataError(
                f"the colour-coded masks hold {len(keys)} different colours (e.g. {kinds['rgb']}), too "
                "many for class colours; save masks without anti-aliasing as PNG, or write classes.json "
                "with the class colours"
            )
        return Labels(ClassSet(tuple(f"class {i}" for i in range(len(keys))), tuple(keys)), colormap=tuple(keys))
    top, top_name = -1, ""
    for name, s in summaries:
        vals = [int(v) for v in s.values.tolist() if v != IGNORE]
        if vals and max(vals) > top:
            top, top_name = max(vals), name
    top = max(top, 0)  # every pixel is ignore: one class, which the check flags
    if top >= 254:
        raise DataError(
            f"{top_name} holds label value {top}, but at most 254 classes (0..253) are supported; "
            "masks must store class numbers, with 255 for ignore"
        )
    names = [f"class {i}" for i in range(top + 1)]
    return Labels(ClassSet.default(names))


def scan_masks(
    layout: Layout,
    pairs: Sequence[tuple[str, Path, Path]],
    cf: ClassesFile | None,
    max_pixels: int = MAX_PIXELS,
) -> list[tuple[str, MaskSummary]]:
    """Read every mask once and keep only its value histogram (raises on the first unreadable mask)."""
    colormap, ignore_color = (cf.colors, cf.ignore_color) if cf else (None, None)
    out = []
    for _, _, mp in pairs:
        name = layout.rel(mp)
        raw, mode = load_mask_raw(mp, name, max_pixels)
        out.append((name, summarize_mask(raw, mode, colormap, ignore_color)))
    return out


def class_presence(labels: Labels, s: MaskSummary, name: str) -> np.ndarray:
    """(K,) bool: which classes have labelled pixels in this mask (from its summary, no pixels read)."""
    out = np.zeros(labels.classes.num_classes, bool)
    ids = labels.class_of_values(s, name).astype(np.int64)
    ids = ids[(s.counts > 0) & (ids < labels.classes.num_classes)]
    out[ids] = True
    return out


# -- the source -----------------------------------------------------------------------------------


class FolderSource(PairSource):
    """Image/mask file pairs decoded on load(); errors name the file."""

    def __init__(
        self,
        root: Path,
        pairs: Sequence[tuple[str, Path, Path]],
        labels: Labels,
        max_pixels: int = MAX_PIXELS,
    ):
        self.root, self.pairs, self.labels, self.max_pixels = Path(root), list(pairs), labels, max_pixels

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, i: int) -> str:
        return self.pairs[i][0]

    def _rel(self, p: Path) -> str:
        try:
            return p.relative_to(self.root).as_posix()
        except ValueError:
            return str(p)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        _, ip, mp = self.pairs[i]
        iname, mname = self._rel(ip), self._rel(mp)
        image, orientation = load_image_oriented(ip, iname, self.max_pixels)
        raw, mode = load_mask_raw(mp, mname, self.max_pixels)
        ids = self.labels.decode(raw, mode, mname)
        return image, align_mask(ids, image.shape, orientation, mask_name=mname, image_name=iname)


def _raise_layout_problems(layout: Layout) -> None:
    for sf in layout.splits:
        if sf.duplicates:
            a, b = sf.duplicates[0]
            raise DataError(f"{layout.rel(a)} and {layout.rel(b)} share the name {a.stem!r}; keep only one of them")
    if not any(sf.pairs for sf in layout.splits):
        n_img = sum(len(sf.unpaired_images) for sf in layout.splits)
        n_mask = sum(len(sf.unpaired_masks) for sf in layout.splits)
        raise DataError(
            f"no image/mask pairs in {layout.root} ({n_img} images and {n_mask} masks without a "
            f"partner); {LAYOUT_HINT.replace('ROOT', str(layout.root))}"
        )


def open_folder(root: str | Path, cfg: DataConfig) -> Splits:
    """Open a folder dataset: pair files, read the classes, scan the masks once, split train/val."""
    layout = find_layout(root)
    _raise_layout_problems(layout)
    cf = find_classes_file(layout.root, cfg)
    all_pairs = [p for sf in layout.splits for p in sf.pairs]
    summaries = scan_masks(layout, all_pairs, cf)
    labels = decide_labels(summaries, cf)
    for name, s in summaries:
        labels.class_of_values(s, name)  # out-of-range labels fail now, not in the middle of training
    train, val, notes, warnings = _train_val(layout, labels, summaries, cfg)
    test_files = layout.get("test")
    test = FolderSource(layout.root, test_files.pairs, labels) if test_files is not None and test_files.pairs else None
    skipped = sum(len(sf.unpaired_images) + len(sf.unpaired_masks) for sf in layout.splits)
    if skipped:
        notes.append(f"{skipped} files without a partner were skipped; the dataset check lists them")
    if cf is None:
        notes.append(
            f"no classes file: {labels.classes.num_classes} classes found in the masks; add classes.json "
            "to name them or to mark a void value with ignore_index"
        )
    if labels.grey == "binary":
        notes.append("black-and-white masks: 0 is background (class 0), 255 foreground (class 1)")
    kinds = sorted({labels.encoding(s.kind) for _, s in summaries})
    counts = f"{len(train)} train / {len(val)} val" + (f" / {len(test)} test" if test is not None else "")
    desc = (
        f"folder {layout.root.name}: {counts} pairs, {labels.classes.num_classes} classes "
        f"({', '.join(labels.classes.names[:6])}{', ...' if labels.classes.num_classes > 6 else ''}), "
        f"{'/'.join(kinds)} masks"
    )
    return Splits(
        train=train, val=val, classes=labels.classes, test=test, description=desc, notes=notes, warnings=warnings
    )


def _train_val(
    layout: Layout, labels: Labels, summaries: list[tuple[str, MaskSummary]], cfg: DataConfig
) -> tuple[PairSource, PairSource, list[str], list[str]]:
    """The training and validation sources, and the notes and warnings their split earns: a val/ folder as it
    is, else a seeded split that puts every class on two or more photos among the validation pairs."""
    train_files = layout.get("train") or layout.get("all")
    val_files = layout.get("val")
    if train_files is None or not train_files.pairs:
        raise DataError(f"{layout.root / 'train'} has no image/mask pairs; put the training pairs there")
    whole = FolderSource(layout.root, train_files.pairs, labels)
    if val_files is not None and val_files.pairs:
        return whole, FolderSource(layout.root, val_files.pairs, labels), [], []
    if len(train_files.pairs) < 2:
        raise DataError(f"{layout.root} has only one image/mask pair; training needs at least two (one to validate on)")
    by_name = dict(summaries)
    presence = np.stack(
        [class_presence(labels, by_name[layout.rel(mp)], layout.rel(mp)) for _, _, mp in train_files.pairs]
    )
    tr_idx, va_idx = stratified_split(presence, cfg.val_fraction, cfg.seed)
    note = (
        f"no val/ folder: {len(va_idx)} of {len(train_files.pairs)} pairs held out for validation, chosen so "
        f"that every class on two or more photos is among them (val_fraction {cfg.val_fraction}, seed {cfg.seed})"
    )
    warnings = coverage_notes(labels.classes.names, presence, va_idx)
    return SubsetSource(whole, tr_idx), SubsetSource(whole, va_idx), [note], warnings
