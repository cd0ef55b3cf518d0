"""Assisted labelling for a label set (segdemo/core/fill.py on a LabelSet's photos): strokes fill the photo, a
box proposes one object, and a model learned from the set's saved photos pre-labels the next one.

What is proposed is kept in the set's own folder beside the photo's mask (LabelSet.put_extra, PROPOSAL), never
in a path from the request, and only a Save turns it into the photo's mask (LabelSet.save_layers, with the
student's strokes on top). A model's first guess is kept too (GUESS), so the save can say how much of it the
student kept. Nothing here imports gradio.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

import numpy as np

from segdemo.core import fill as engine
from segdemo.data.base import IGNORE
from segdemo.errors import DataError
from segdemo.server.labelset import GUESS, PROPOSAL, LabelSet, Photo

log = logging.getLogger(__name__)

MODEL_PHOTOS = 8  # the most recently saved photos a model learns from (their encoder features stay cached)
MODELS_KEPT = 16  # label sets whose model is kept in memory; another set's page refits its own (~0.2 s)
MAX_BOX_TEXT = 200  # characters of a box typed or sent as text


def parse_box(text: object) -> tuple[float, float, float, float]:
    """A box from the page: "left, top, right, bottom" in photo pixels (text) or four numbers; DataError else."""
    if isinstance(text, str):
        if len(text) > MAX_BOX_TEXT:
            raise DataError("a box is four numbers: left, top, right, bottom")
        parts: list = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p]
    elif isinstance(text, list | tuple):
        parts = list(text)
    else:
        raise DataError("draw a box first: click two opposite corners of the object on the preview")
    if len(parts) != 4:
        raise DataError(
            "a box is four numbers: left, top, right, bottom"
            + (" (click the second corner on the preview)" if len(parts) == 2 else "")
        )
    try:
        box = tuple(float(v) for v in parts)
    except (TypeError, ValueError):
        raise DataError("a box is four numbers: left, top, right, bottom") from None
    if not all(np.isfinite(box)):
        raise DataError("a box is four numbers: left, top, right, bottom")
    return box  # type: ignore[return-value]


class LabelAssist:
    """Fills, boxes and pre-labels for every set of a LabelStore; keeps one LabelModel per set, refitted when
    the set's saved masks change."""

    def __init__(self) -> None:
        self._models: OrderedDict[str, tuple[tuple, engine.LabelModel | None]] = OrderedDict()
        self._lock = threading.Lock()

    def model(self, labels: LabelSet) -> engine.LabelModel | None:
        """The set's model, learned from its most recently saved photos; None before two classes are saved."""
        photos = [p for p in labels.photos() if p.labelled]
        stamps = []
        for p in photos:
            try:
                stamps.append((labels.folder / "masks" / f"{p.id}.png").stat().st_mtime_ns)
            except OSError:
                stamps.append(0)
        recent = [p for _, p in sorted(zip(stamps, photos, strict=True), key=lambda t: t[0])][-MODEL_PHOTOS:]
        k = labels.classes().num_classes
        key = (k, tuple(sorted((p.id, s) for s, p in zip(stamps, photos, strict=True))))
        folder = str(labels.folder)
        with self._lock:
            cached = self._models.get(folder)
            if cached is not None and cached[0] == key:
                self._models.move_to_end(folder)
                return cached[1]
        model = engine.LabelModel.fit([(_image(labels, p), labels.mask(p)) for p in recent], k) if recent else None
        with self._lock:
            self._models[folder] = (key, model)
            while len(self._models) > MODELS_KEPT:
                self._models.popitem(last=False)
        return model

    def prelabel(self, labels: LabelSet, photo: Photo) -> engine.Filled | None:
        """For a photo not labelled yet that shows nothing: the model's guess, kept as what the page shows (and
        as the guess a save is measured against). None when there is no model yet, or nothing to guess."""
        if photo.labelled or labels.shown(photo) is not None:
            _warm(labels, photo)
            return None
        try:
            model = self.model(labels)
            if model is None:
                _warm(labels, photo)
                return None
            guess = model.prelabel(_image(labels, photo))
        except DataError:
            return None
        except Exception:  # a failed guess must never stop the student from painting by hand
            log.exception("pre-labelling a photo failed")
            return None
        labels.put_extra(photo.id, GUESS, guess.mask)
        labels.put_extra(photo.id, PROPOSAL, guess.mask)
        return guess

    @staticmethod
    def fill(labels: LabelSet, photo: Photo, strokes: np.ndarray) -> engine.Filled:
        """The whole photo from the student's strokes, correcting what the page showed; kept as the proposal."""
        shown = labels.shown(photo)
        if shown is not None and not (shown != IGNORE).any():
            shown = None
        k = labels.classes().num_classes
        out = engine.fill_strokes(_image(labels, photo), strokes, k, proposal=shown)
        labels.put_extra(photo.id, PROPOSAL, out.mask)
        return out

    @staticmethod
    def box(labels: LabelSet, photo: Photo, box: object, object_class: object, strokes: np.ndarray) -> engine.Filled:
        """GrabCut's object in the box as `object_class`, the rest class 0, the student's strokes on top; kept as
        the proposal."""
        classes = labels.classes()
        k = classes.num_classes
        cls = _class_index(object_class, classes.names)
        if cls == 0:
            raise DataError(f"the box is for an object; pick a class other than {classes.names[0]!r}")
        out = engine.fill_box(_image(labels, photo), parse_box(box), cls, k, background_class=0)
        mask = np.where(strokes != IGNORE, strokes, out.mask).astype(np.uint8)
        labels.put_extra(photo.id, PROPOSAL, mask)
        return engine.Filled(mask, out.method, out.ms)


def _warm(labels: LabelSet, photo: Photo) -> None:
    """The photo's encoder features, computed beside the request so its first Fill need not wait for them."""

    def run() -> None:
        try:
            engine.warm(_image(labels, photo))
        except Exception:  # only a head start: the fill computes what is missing
            log.debug("warming a photo's features failed", exc_info=True)

    threading.Thread(target=run, name="segdemo-fill-warm", daemon=True).start()


def _image(labels: LabelSet, photo: Photo) -> np.ndarray:
    """The stored photo, writable (the engine hands it to torch, which warns about a read-only array)."""
    image = labels.image(photo)
    return image if image.flags.writeable else image.copy()


def _class_index(value: object, names: tuple[str, ...]) -> int:
    """A class by its index or its name; DataError for one the set does not have."""
    if isinstance(value, bool):
        value = None
    if isinstance(value, int | float) and float(value).is_integer() and 0 <= int(value) < len(names):
        return int(value)
    if isinstance(value, str):
        folded = [n.casefold() for n in names]
        if value.strip().casefold() in folded:
            return folded.index(value.strip().casefold())
        if value.strip().isdigit() and int(value.strip()) < len(names):
            return int(value.strip())
    shown = str(value)[:40]
    raise DataError(f"{shown!r} is not one of this set's {len(names)} classes ({', '.join(names)})")
