"""Predict's last pictures per browser, kept on the server so that moving the opacity slider or hiding a class
redraws them without running the model again. Bounded: a few per browser, a byte cap for the whole server
(the oldest go first); a view is found only with its id AND the browser's token that made it."""

from __future__ import annotations

import hmac
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from segdemo.data.base import ClassSet
from segdemo.errors import UserError
from segdemo.tokens import hash_owner
from segdemo.viz import overlay

VIEWS_BYTES = 256 << 20  # all browsers together: a dozen 2048 px photos, or hundreds of 512 px ones
VIEWS_PER_OWNER = 4  # a browser's newest predictions (tabs of one browser share its token)
GONE = "This picture is no longer kept on the server; press Segment to draw it again"


@dataclass
class View:
    """What a redraw needs: the picture, the predicted ids, the true ids when there were some, the classes."""

    owner_key: str
    image: np.ndarray  # (H, W, 3) uint8, as predicted (after any shrinking)
    mask: np.ndarray  # (H, W) uint8 predicted class ids
    target: np.ndarray | None  # (H, W) uint8 true class ids with IGNORE, or None
    classes: ClassSet

    @property
    def nbytes(self) -> int:
        return self.image.nbytes + self.mask.nbytes + (0 if self.target is None else self.target.nbytes)

    def pair(self, alpha: float, hidden=()) -> tuple[np.ndarray, np.ndarray]:
        """The slider's two pictures: truth and prediction overlaid when there is a truth, else the image and
        the prediction overlaid; `hidden` class ids left uncoloured in both."""
        pred = overlay(self.image, self.mask, self.classes, alpha, hidden=hidden)
        if self.target is None:
            return self.image, pred
        return overlay(self.image, self.target, self.classes, alpha, hidden=hidden), pred


class ViewCache:
    def __init__(self, max_bytes: int = VIEWS_BYTES, per_owner: int = VIEWS_PER_OWNER):
        self.max_bytes, self.per_owner = max_bytes, per_owner
        self._views: OrderedDict[str, View] = OrderedDict()  # oldest first
        self._lock = threading.Lock()

    def put(self, owner: str, image, mask, target, classes: ClassSet) -> str:
        """Keep a prediction for `owner` (a valid token); returns its id."""
        view = View(hash_owner(owner), image, mask, target, classes)
        view_id = secrets.token_urlsafe(16)
        with self._lock:
            self._views[view_id] = view
            mine = [k for k, v in self._views.items() if v.owner_key == view.owner_key]
            for k in mine[: max(0, len(mine) - self.per_owner)]:
                del self._views[k]
            while len(self._views) > 1 and sum(v.nbytes for v in self._views.values()) > self.max_bytes:
                self._views.popitem(last=False)
        return view_id

    def get(self, owner: str, view_id) -> View:
        """The view, for its owner only; UserError (the same words for another's, a made-up or an evicted id)."""
        key = hash_owner(owner)
        with self._lock:
            view = self._views.get(view_id) if isinstance(view_id, str) else None
        if view is None or not hmac.compare_digest(view.owner_key, key):
            raise UserError(GONE)
        return view

    def __len__(self) -> int:
        return len(self._views)
