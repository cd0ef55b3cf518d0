"""Dataset check: read every pair once and report all problems in plain sentences, never stopping early."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segdemo.data.base import IGNORE, DataError, PairSource, Splits, coverage_notes
from segdemo.data.config import DataConfig
from segdemo.data.folder import Labels, Layout, class_presence, decide_labels, find_classes_file, find_layout
from segdemo.data.masks import MaskSummary, summarize_mask
from segdemo.imageio import MAX_PIXELS, load_image_oriented, load_mask_raw, mask_alignment, mismatch_message

CAP = 20  # names listed per kind of problem; the rest are counted
BUILTIN_CHECK_PAIRS = 48  # the built-in data is drawn from a seed: a few dozen pairs show what all of them would

# What a warning is about, for programs (the UI, tests); its text is for people.
PARTIAL = "partial"  # only the first pairs of each split were read
CASE_ONLY = "case_only"  # an image and a mask whose names differ only in case
UNPAIRED_IMAGES, UNPAIRED_MASKS, NOT_IMAGES = "unpaired_images", "unpaired_masks", "not_images"
EXIF_TURNED = "exif_turned"  # masks turned with an EXIF rotation that keeps the size
JPEG_MASKS = "jpeg_masks"
NO_CLASSES_FILE = "no_classes_file"
ABSENT_CLASSES = "absent_classes"
FEW_PHOTOS = "few_photos"  # a class labelled on fewer than base.FEW_PHOTOS photos
ZIP_SKIPPED = "zip_skipped"  # zip entries not unpacked (system files, nested archives)


def _capped(items: list[str], cap: int = CAP, what: str = "files") -> list[str]:
    return items[:cap] + ([f"... and {len(items) - cap} more {what}"] if len(items) > cap else [])


@dataclass(frozen=True)
class CheckWarning:
    """Something worth knowing that does not stop training: a code (the constants above) and a sentence."""

    code: str
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass
class CheckReport:
    """Everything a student needs to know before training on a dataset."""

    source: str
    pairs: dict[str, int] = field(default_factory=dict)  # split -> pairs ("all" before a seeded split)
    unpaired_images: list[str] = field(default_factory=list)
    unpaired_masks: list[str] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)  # not image files (README.txt, ...)
    size_mismatches: list[dict[str, Any]] = field(default_factory=list)  # mask, mask_size, image, image_size, reason
    encoding: str = ""  # "ids", "binary", "palette", "rgb", or "mixed (...)"
    label_values: list[int] = field(default_factory=list)  # raw values found in grey/palette masks
    mask_colors: list[list[int]] = field(default_factory=list)  # colours found in colour-coded masks
    classes_file: str | None = None
    class_names: list[str] = field(default_factory=list)
    pixel_share: dict[str, float] = field(default_factory=dict)  # class -> fraction of non-ignore pixels
    ignore_share: float = 0.0  # fraction of all checked pixels that are ignore
    out_of_range: list[dict[str, Any]] = field(default_factory=list)  # file, values
    unreadable: list[dict[str, str]] = field(default_factory=list)  # file, reason
    problems: list[str] = field(default_factory=list)
    warnings: list[CheckWarning] = field(default_factory=list)
    ok: bool = False

    def warn(self, code: str, text: str) -> None:
        self.warnings.append(CheckWarning(code, text))

    @property
    def total_pairs(self) -> int:
        return sum(self.pairs.values())

    def finish(self) -> CheckReport:
        """Turn the collected findings into sentences and decide ok."""
        if self.total_pairs == 0 and not self.problems:
            self.problems.append(
                "no image/mask pairs were found: an image and its mask must share a file name "
                "(images/0001.jpg + masks/0001.png)"
            )
        elif self.total_pairs == 1 and "val" not in self.pairs:
            self.problems.append(
                "only one image/mask pair was found; training needs at least two (one to train on, one to validate)"
            )
        elif self.pairs.get("train", 1) == 0:
            self.problems.append("the train/ folder has no image/mask pairs; put the training pairs there")
        self.problems += _capped([u["reason"] for u in self.unreadable])
        self.problems += _capped([m["reason"] for m in self.size_mismatches])
        self.problems += _capped([o["reason"] for o in self.out_of_range])
        self.ok = not self.problems
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_pairs"] = self.total_pairs
        return d

    def to_text(self) -> str:
        lines = [f"Dataset check: {'OK' if self.ok else 'PROBLEMS FOUND'}", f"source: {self.source}"]
        if self.pairs:
            lines.append("pairs: " + ", ".join(f"{k} {v}" for k, v in self.pairs.items()))
        if self.encoding:
            lines.append(f"masks: {self.encoding}")
        if self.label_values:
            shown = ", ".join(str(v) for v in self.label_values[:40])
            lines.append(f"label values found: {shown}{' ...' if len(self.label_values) > 40 else ''}")
        if self.mask_colors:
            lines.append("mask colours found: " + ", ".join(str(tuple(c)) for c in self.mask_colors[:20]))
        if self.classes_file:
            lines.append(f"classes file: {self.classes_file}")
        if self.pixel_share:
            lines.append(
                "classes (share of labelled pixels): "
                + ", ".join(f"{n} {100 * s:.1f}%" for n, s in self.pixel_share.items())
            )
            lines.append(f"ignored pixels: {100 * self.ignore_share:.1f}%")
        for title, items in (("Problems", self.problems), ("Warnings", self.warnings)):
            if items:
                lines.append(f"{title}:")
                lines += [f"  - {s}" for s in items]
        return "\n".join(lines)


def failed_report(source: str, reason: str) -> CheckReport:
    """A report for a source that could not be opened at all."""
    return CheckReport(source=source, problems=[reason]).finish()


def check_dataset(
    source: str | Path | Splits,
    cfg: DataConfig | None = None,
    *,
    max_pairs: int | None = None,
    name: str | None = None,
) -> CheckReport:
    """Check a folder dataset (path) or opened Splits; max_pairs caps the pairs read per split."""
    cfg = cfg or DataConfig()
    if isinstance(source, Splits):
        return _check_splits(source, name or source.description or "dataset", max_pairs)
    return _check_folder(Path(source), cfg, name, max_pairs)


# -- folder datasets ------------------------------------------------------------------------------


def _bad_values(labels: Labels, s: MaskSummary) -> list:
    """Raw values (or colours) of a mask that map to no class."""
    enc, k = labels.encoding(s.kind), labels.classes.num_classes
    if enc == "rgb":
        known = {tuple(c) for c in labels.colormap or ()} | ({labels.ignore_color} if labels.ignore_color else set())
        return [list(map(int, c)) for c in s.values if tuple(int(v) for v in c) not in known]
    vals = [int(v) for v in s.values]
    if enc == "binary":
        return [v for v in vals if v not in (0, 255)]
    return [v for v in vals if v != IGNORE and v != labels.ignore_value and not 0 <= v < k]


def _out_of_range_reason(labels: Labels, file: str, bad: list) -> str:
    k = labels.classes.num_classes
    if bad and isinstance(bad[0], list):
        shown = ", ".join(str(tuple(c)) for c in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        return (
            f'{file} has colours that are not class colours: {shown}; add them to "colors" in the classes '
            "file or repaint the mask"
        )
    if labels.grey == "binary":
        return f"{file} holds values {bad[:10]} besides 0 and 255; a black-and-white mask must be pure 0/255"
    return (
        f"labels out of range: found values {bad[:10]} in {file} but {labels.classes_from} has {k} classes "
        f"(0..{k - 1}); add classes or set ignore_index"
    )


def _check_folder(root: Path, cfg: DataConfig, name: str | None, max_pairs: int | None) -> CheckReport:
    rep = CheckReport(source=name or str(root))
    try:
        layout = find_layout(root)
    except DataError as e:
        return failed_report(rep.source, str(e))
    _report_files(rep, layout)
    cf, cf_failed = None, False
    try:
        cf = find_classes_file(layout.root, cfg)
        rep.classes_file = str(cf.path) if cf else None
    except DataError as e:
        rep.problems.append(str(e))
        cf_failed = True
    colormap, ignore_color = (cf.colors, cf.ignore_color) if cf else (None, None)
    summaries: list[tuple[str, MaskSummary]] = []
    ambiguous, jpeg_masks = [], []
    for sf in layout.splits:
        for _, ip, mp in sf.pairs[:max_pairs]:
            iname, mname = layout.rel(ip), layout.rel(mp)
            s = image = None
            try:
                raw, mode = load_mask_raw(mp, mname, MAX_PIXELS)
                s = summarize_mask(raw, mode, colormap, ignore_color)
                summaries.append((mname, s))
                if mp.suffix.lower() in (".jpg", ".jpeg"):
                    jpeg_masks.append(mname)
            except DataError as e:
                rep.unreadable.append({"file": mname, "reason": str(e)})
            try:
                image, orientation = load_image_oriented(ip, iname, MAX_PIXELS)
            except DataError as e:
                rep.unreadable.append({"file": iname, "reason": str(e)})
            if s is None or image is None:
                continue
            how = mask_alignment(s.shape, image.shape, orientation)
            if how is None:
                rep.size_mismatches.append(
                    {
                        "mask": mname,
                        "mask_size": [s.shape[1], s.shape[0]],
                        "image": iname,
                        "image_size": [image.shape[1], image.shape[0]],
                        "reason": mismatch_message(mname, s.shape, iname, image.shape, orientation),
                    }
                )
            elif how == "transpose" and (orientation in (2, 3, 4) or image.shape[0] == image.shape[1]):
                ambiguous.append(iname)
    if max_pairs is not None and any(len(sf.pairs) > max_pairs for sf in layout.splits):
        rep.warn(PARTIAL, f"only the first {max_pairs} pairs of each split were checked")
    if ambiguous:
        rep.warn(
            EXIF_TURNED,
            f"{len(ambiguous)} images (e.g. {ambiguous[0]}) have an EXIF rotation or mirror that "
            "keeps their size, so their masks were turned with them, assuming the masks were drawn "
            "on the stored pixels; look at one overlay to confirm",
        )
    if jpeg_masks:
        rep.warn(
            JPEG_MASKS,
            f"{len(jpeg_masks)} masks are JPEG files (e.g. {jpeg_masks[0]}); JPEG compression "
            "changes label values at edges, so save masks as PNG",
        )
    if summaries:
        try:
            labels = decide_labels(summaries, cf)
        except DataError as e:
            rep.problems.append(str(e))
        else:
            _report_labels(rep, labels, summaries, cf is None and not cf_failed)
    return rep.finish()


def _report_files(rep: CheckReport, layout: Layout) -> None:
    for sf in layout.splits:
        rep.pairs[sf.split] = len(sf.pairs)
        rep.unpaired_images += [layout.rel(p) for p in sf.unpaired_images]
        rep.unpaired_masks += [layout.rel(p) for p in sf.unpaired_masks]
        rep.ignored_files += [layout.rel(p) for p in sf.ignored]
        rep.problems += _capped(
            [
                f"{layout.rel(a)} and {layout.rel(b)} share the name {a.stem!r}; keep only one of them"
                for a, b in sf.duplicates
            ]
        )
        for img, mask in sf.case_only[:CAP]:
            rep.warn(
                CASE_ONLY,
                f"{layout.rel(img)} and {layout.rel(mask)} differ only in upper/lower case, so they "
                "are not paired; rename one to match exactly",
            )
    if rep.unpaired_images:
        rep.warn(
            UNPAIRED_IMAGES,
            f"{len(rep.unpaired_images)} images have no mask and are skipped: "
            + ", ".join(_capped(rep.unpaired_images)),
        )
    if rep.unpaired_masks:
        rep.warn(
            UNPAIRED_MASKS,
            f"{len(rep.unpaired_masks)} masks have no image and are skipped: " + ", ".join(_capped(rep.unpaired_masks)),
        )
    if rep.ignored_files:
        rep.warn(
            NOT_IMAGES,
            f"{len(rep.ignored_files)} files are not images and are ignored: " + ", ".join(_capped(rep.ignored_files)),
        )


def _report_labels(rep: CheckReport, labels: Labels, summaries: list[tuple[str, MaskSummary]], derived: bool) -> None:
    rep.class_names = list(labels.classes.names)
    kinds = sorted({labels.encoding(s.kind) for _, s in summaries})
    rep.encoding = kinds[0] if len(kinds) == 1 else f"mixed ({', '.join(kinds)})"
    grey = sorted({int(v) for _, s in summaries if s.kind != "rgb" for v in s.values})
    rep.label_values = grey
    colors = sorted({tuple(int(v) for v in c) for _, s in summaries if s.kind == "rgb" for c in s.values})
    rep.mask_colors = [list(c) for c in colors[:256]]
    hist = np.zeros(256, np.int64)
    presence = []
    for file, s in summaries:
        bad = _bad_values(labels, s)
        if bad:
            rep.out_of_range.append(
                {"file": file, "values": bad[:50], "reason": _out_of_range_reason(labels, file, bad)}
            )
            continue
        np.add.at(hist, labels.class_of_values(s, file).astype(np.int64), s.counts.astype(np.int64))
        presence.append(class_presence(labels, s, file))
    _shares(rep, hist)
    if presence:
        for text in coverage_notes(labels.classes.names, np.stack(presence)):
            rep.warn(FEW_PHOTOS, text)
    if derived:
        rep.warn(
            NO_CLASSES_FILE,
            f"no classes file: {labels.classes.num_classes} classes were inferred from the masks; add "
            'classes.json to name them, or to mark a void value with "ignore_index"',
        )


def _shares(rep: CheckReport, hist: np.ndarray) -> None:
    k = len(rep.class_names)
    total, labelled = int(hist.sum()), int(hist[:k].sum())
    rep.ignore_share = float(hist[IGNORE] / total) if total else 0.0
    rep.pixel_share = {n: (float(hist[i] / labelled) if labelled else 0.0) for i, n in enumerate(rep.class_names)}
    if total and labelled == 0:
        rep.problems.append(
            "every checked pixel is marked ignore (255 or ignore_index), so there is nothing to "
            "learn; check the mask values"
        )
        return
    absent = [n for i, n in enumerate(rep.class_names) if hist[i] == 0]
    if absent and total:
        rep.warn(
            ABSENT_CLASSES,
            f"{len(absent)} classes never appear in the checked masks: " + ", ".join(_capped(absent, what="classes")),
        )


# -- opened splits (built-in data, Oxford-IIIT Pet) -----------------------------------------------


def _check_splits(splits: Splits, source: str, max_pairs: int | None) -> CheckReport:
    rep = CheckReport(source=source, encoding="ids", class_names=list(splits.classes.names))
    k = splits.classes.num_classes
    hist = np.zeros(256, np.int64)
    parts: list[tuple[str, PairSource]] = [("train", splits.train), ("val", splits.val)]
    if splits.test is not None:
        parts.append(("test", splits.test))
    truncated = False
    for split, src in parts:
        rep.pairs[split] = len(src)
        n = len(src) if max_pairs is None else min(len(src), max_pairs)
        truncated |= n < len(src)
        for i in range(n):
            name = f"{split}/{src.name(i)}"
            try:
                image, mask = src.load(i)
            except DataError as e:
                rep.unreadable.append({"file": name, "reason": str(e)})
                continue
            if image.shape[:2] != mask.shape[:2]:
                mw, mh, iw, ih = mask.shape[1], mask.shape[0], image.shape[1], image.shape[0]
                rep.size_mismatches.append(
                    {
                        "mask": f"mask of {name}",
                        "mask_size": [mw, mh],
                        "image": name,
                        "image_size": [iw, ih],
                        "reason": f"the mask of {name} is {mw}x{mh} but the image is {iw}x{ih}: "
                        "masks must match their image's size",
                    }
                )
                continue
            counts = np.bincount(mask.ravel(), minlength=256)
            bad = [int(v) for v in np.flatnonzero(counts) if v != IGNORE and v >= k]
            if bad:
                rep.out_of_range.append(
                    {
                        "file": name,
                        "values": bad,
                        "reason": (
                            f"labels out of range: found values {bad[:10]} in {name} but the dataset has "
                            f"{k} classes (0..{k - 1})"
                        ),
                    }
                )
                continue
            hist += counts
    rep.label_values = [int(v) for v in np.flatnonzero(hist)]
    if truncated:
        rep.warn(PARTIAL, f"only the first {max_pairs} pairs of each split were checked")
    _shares(rep, hist)
    return rep.finish()
