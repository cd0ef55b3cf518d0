"""Predict's last pictures per browser, kept on the server so that moving the opacity slider or hiding a class
redraws them without running the model again. Bounded: kept at display size (DISPLAY_MAX_SIDE), a few per
browser, a byte cap for the whole server (the oldest go first); a view is found only with its id AND the
browser's token that made it."""

from __future__ import annotations

import hmac
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from segdemo.core.viz import overlay
from segdemo.data.base import ClassSet
from segdemo.errors import UserError
from segdemo.server.tokens import hash_owner

VIEWS_BYTES = 256 << 20  # all browsers together: 50 views of 1024 px photos with masks, hundreds of 512 px ones
DISPLAY_MAX_SIDE = 1024  # the slider's pictures: a page shows them smaller still, and a redraw stays ~10 ms
VIEWS_PER_OWNER = 4  # a browser's newest predictions (tabs of one browser share its token)
GONE = "This picture is no longer kept on the server; press Segment to draw it again"


@dataclass
class View:
    """What a redraw needs: the picture, the predicted ids, the true ids when there were some, the classes."""

    image: np.ndarray  # (H, W, 3) uint8, longest side at most DISPLAY_MAX_SIDE
    mask: np.ndarray  # (H, W) uint8 predicted class ids
    target: np.ndarray | None  # (H, W) uint8 true class ids with IGNORE, or None
    classes: ClassSet
    owner_key: str = ""  # set when kept (ViewCache.put)

    @classmethod
    def for_display(cls, image: Any, mask: Any, target: Any, classes: ClassSet) -> View:
        """A prediction at display size: the image shrunk by area, the masks by nearest neighbour."""
        h, w = image.shape[:2]
        f = max(h, w) / DISPLAY_MAX_SIDE
        if f > 1:
            size = (max(1, round(w / f)), max(1, round(h / f)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
            if target is not None:
                target = cv2.resize(target, size, interpolation=cv2.INTER_NEAREST)
        return cls(image, mask, target, classes)

    @property
    def nbytes(self) -> int:
        return self.image.nbytes + self.mask.nbytes + (0 if self.target is None else self.target.nbytes)

    def pair(self, alpha: float, hidden: Any = ()) -> tuple[np.ndarray, np.ndarray]:
        """The slider's two pictures: truth and prediction overlaid when there is a truth, else the image and
        the prediction overlaid; `hidden` class ids left uncoloured in both."""
        pred = overlay(self.image, self.mask, self.classes, alpha, hidden=hidden)
        if self.target is None:
            return self.image, pred
        return overlay(self.image, self.target, self.classes, alpha, hidden=hidden), pred


class ViewCache:
    def __init__(self, max_bytes: int = VIEWS_BYTES, per_owner: int = VIEWS_PER_OWNER) -> None:
        self.max_bytes, self.per_owner = max_bytes, per_owner
        self._views: OrderedDict[str, View] = OrderedDict()  # oldest first
        self._lock = threading.Lock()

    def put(self, owner: str, view: View) -> str:
        """Keep a view for `owner` (a valid token); returns its id."""
        view = replace(view, owner_key=hash_owner(owner))
        view_id = secrets.token_urlsafe(16)
        with self._lock:
            self._views[view_id] = view
            mine = [k for k, v in self._views.items() if v.owner_key == view.owner_key]
            for k in mine[: max(0, len(mine) - self.per_owner)]:
                del self._views[k]
            while len(self._views) > 1 and sum(v.nbytes for v in self._views.values()) > self.max_bytes:
                self._views.popitem(last=False)
        return view_id

    def get(self, owner: str, view_id: Any) -> View:
        """The view, for its owner only; UserError (the same words for another's, a made-up or an evicted id)."""
        key = hash_owner(owner)
        with self._lock:
            view = self._views.get(view_id) if isinstance(view_id, str) else None
        if view is None or not hmac.compare_digest(view.owner_key, key):
            raise UserError(GONE)
        return view

    def __len__(self) -> int:
        return len(self._views)
