"""The Label tab's assisted labelling (segdemo/server/label_assist.py): "Fill" turns the student's strokes into a
whole mask, two clicks on the preview and "Fill the box" make GrabCut propose one object, and a photo opened
after others are saved comes pre-labelled by a model learned from them.

The editor keeps only the student's strokes; the preview beside it shows the photo with what Save will store
(the fill or the model's guess, the strokes on top), so nothing unpainted is saved without being seen. The
proposal stays on the server in the set's own folder, found by the owner token and the photo in the editor, and
every handler refuses paint sent with another photo than the one it names, as Save does.
"""

from __future__ import annotations

from typing import Any, Protocol

import cv2
import gradio as gr
import numpy as np

from segdemo.core.viz import overlay
from segdemo.errors import DataError
from segdemo.server.label_assist import LabelAssist, parse_box
from segdemo.server.labelset import GUESS, LabelSet, Photo
from segdemo.ui.errors import user_errors
from segdemo.ui.listeners import HEAVY
from segdemo.ui.words import md

PREVIEW_ALPHA = 0.5
# The preview is drawn at this size (longest side): gradio 6.31's static image computes a click's pixel from the
# picture's natural size capped at 1:1, so a picture shown larger than it is gets its clicks off or lost.
PREVIEW_SIDE = 768
BOX_COLOR = (255, 255, 255)
TEACH = (
    "**What Fill does.** It learns, from the pixels you painted, what each class looks like (colour and "
    "texture, through a network trained on ImageNet photos) and spreads your strokes over the photo along its "
    "edges. **What the model does.** Once a photo or two are saved, a small model learned from your saved "
    "photos guesses each new photo before you paint; every save teaches it again. Neither knows what you "
    "mean: they guess, and a label is only as good as your corrections. Look at the preview, paint a stroke "
    "wherever it is wrong (in the right class), press Fill again, and Save only what you would sign."
)
NOTHING = "Paint a stroke or two per class, then press **Fill**: the preview shows the whole photo filled."


def layer_files(editor: Any) -> list[str]:
    """The painted layers' files from a raw ImageEditor payload (preprocess=False: Gradio has already checked
    that every path is one of its uploads); gr.Error for anything that is not such a payload."""
    if editor is None:
        return []
    if not isinstance(editor, dict) or not isinstance(editor.get("layers") or [], list):
        raise gr.Error("Send the painted photo as the editor's value (background, layers, composite).")
    files = []
    for layer in editor.get("layers") or []:
        path = layer.get("path") if isinstance(layer, dict) else None
        if not isinstance(path, str):
            raise gr.Error("A painted layer arrived without its file; paint on the photo again.")
        files.append(path)
    return files


class _Tab(Protocol):
    """What the panel needs of the Label tab: this browser's set, and the photo the editor really shows."""

    def set_of(self, token: Any) -> LabelSet: ...

    def editing(self, labels: LabelSet, current: Any, editor: Any) -> Photo: ...


class AssistPanel:
    """The preview, Fill and box widgets, built in the tab's paint section; `tab` gives the set and the checks."""

    def __init__(self, tab: _Tab) -> None:
        self.tab = tab
        self.engine = LabelAssist()
        with gr.Row():
            self.fill_btn = gr.Button("Fill the rest from my strokes", elem_id="label-fill", scale=2)
            self.box_class = gr.Dropdown(
                [("object", 1)], value=1, label="Box class", elem_id="label-box-class", scale=1, min_width=120
            )
            self.box_btn = gr.Button("Fill the box", elem_id="label-box-fill", scale=1)
        self.box_text = gr.Textbox(
            "",
            label="Box: left, top, right, bottom (click two opposite corners of the object on the preview)",
            elem_id="label-box",
            max_length=200,
        )
        self.note = gr.Markdown(NOTHING, elem_id="label-assist")
        self.preview = gr.Image(
            label="What Save stores: your strokes and the fill (click it to draw a box)",
            elem_id="label-preview",
            interactive=False,
            format="jpeg",
            height=420,
            buttons=[],
        )
        with gr.Accordion("How Fill and the model work", open=False):
            gr.Markdown(TEACH, elem_id="label-teach")
        self.outputs = [self.preview, self.note, self.box_class, self.box_text]

    def wire(self, token: gr.BrowserState, current: gr.State, editor: gr.ImageEditor, shown: dict) -> None:
        raw = dict(preprocess=False, concurrency_id=HEAVY, **shown)
        paint = [token, current, editor]
        self.fill_btn.click(self.fill, paint, [self.preview, self.note], api_name="label_fill", **raw)
        self.box_btn.click(
            self.box, [*paint, self.box_text, self.box_class], [self.preview, self.note], api_name="label_box", **raw
        )
        self.preview.select(
            self.corner,
            [token, current, self.box_text],
            [self.box_text, self.preview],
            api_visibility="private",
            concurrency_id=HEAVY,
            **shown,
        )

    # -- what the page shows ---------------------------------------------------------------------------------

    def updates(self, labels: LabelSet, show: Photo | None | str, saved: Photo | None = None) -> dict:
        """The preview, note and box class for the tab's view; a photo to `show` is pre-labelled when the set's
        model can guess it. `saved`: the photo just saved, whose kept share the note reports."""
        names = labels.classes().names
        out: dict = {
            self.box_class: gr.update(choices=[(n, i) for i, n in enumerate(names) if i > 0]),
            self.preview: gr.skip(),
            self.note: gr.skip(),
            self.box_text: gr.skip(),
        }
        said = ""
        if saved is not None and saved.kept is not None:
            said = f"Saved {md(saved.name)}: the model had **{saved.kept:.0%}** right. "
        elif saved is not None:
            said = f"Saved {md(saved.name)}. "
        if show == "keep":
            if said:
                out[self.note] = said
            return out
        out[self.box_text] = ""
        if show is None or isinstance(show, str):
            out[self.preview], out[self.note] = None, said + NOTHING
            return out
        guess = self.engine.prelabel(labels, show)
        shown = labels.shown(show)  # read once: the notes and the preview stand on it
        if guess is not None:
            note = (
                f"The preview shows **{md(guess.method)}** ({guess.ms:.0f} ms). Paint a stroke wherever it is "
                "wrong and press **Fill**, or **Save** it as it is."
            )
        elif shown is None:
            note = NOTHING
        elif (kept := labels.extra(show, GUESS)) is not None and np.array_equal(kept, shown):
            note = (
                "The preview shows **the model's guess** for this photo. Paint a stroke wherever it is wrong and "
                "press **Fill**, or **Save** it as it is."
            )
        else:
            note = "The preview shows this photo's fill: paint where it is wrong and press **Fill** again, or Save."
        out[self.preview], out[self.note] = self.picture(labels, show, shown=shown), said + note
        return out

    @staticmethod
    def scale(photo: Photo) -> float:
        """Preview pixels per photo pixel."""
        return PREVIEW_SIDE / max(photo.width, photo.height)

    @classmethod
    def picture(
        cls, labels: LabelSet, photo: Photo, box: tuple[float, ...] = (), shown: np.ndarray | None | str = "read"
    ) -> np.ndarray:
        """The photo with what the page shows for it blended in (the bare photo when nothing is filled), and a
        box (photo pixels) or a first corner drawn on it, at PREVIEW_SIDE. `shown`: labels.shown(photo) when the
        caller has it already."""
        image = labels.image(photo)
        if isinstance(shown, str):
            shown = labels.shown(photo)
        if shown is not None:
            image = overlay(image, shown, labels.classes(), PREVIEW_ALPHA)
        f = cls.scale(photo)
        size = (round(photo.width * f), round(photo.height * f))
        image = np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_NEAREST))
        at = [round(v * f) for v in box]
        if len(at) == 4:
            cv2.rectangle(image, (at[0], at[1]), (at[2], at[3]), BOX_COLOR, 3)
        elif len(at) == 2:
            cv2.drawMarker(image, (at[0], at[1]), BOX_COLOR, cv2.MARKER_CROSS, 24, 3)
        return image

    def _photo_and_strokes(self, labels: LabelSet, current: Any, editor: Any) -> tuple[Photo, np.ndarray]:
        photo = self.tab.editing(labels, current, editor)
        return photo, labels.strokes_from_layers(photo, layer_files(editor))

    # -- handlers ------------------------------------------------------------------------------------------------

    @user_errors
    def fill(self, token: Any, current: Any, editor: Any) -> Any:
        """Fill the photo in the editor from its strokes (correcting what the preview showed); show the result."""
        labels = self.tab.set_of(token)
        photo, strokes = self._photo_and_strokes(labels, current, editor)
        out = self.engine.fill(labels, photo, strokes)
        return {
            self.preview: self.picture(labels, photo),
            self.note: (
                f"Filled in {out.ms:.0f} ms ({md(out.method)}). **Save** stores what the preview shows; paint a "
                "stroke wherever it is wrong and press **Fill** again first."
            ),
        }

    @user_errors
    def box(self, token: Any, current: Any, editor: Any, box: Any, object_class: Any) -> Any:
        """GrabCut's object inside the box (left, top, right, bottom in photo pixels), the strokes on top."""
        labels = self.tab.set_of(token)
        photo, strokes = self._photo_and_strokes(labels, current, editor)
        out = self.engine.box(labels, photo, box, object_class, strokes)
        return {
            self.preview: self.picture(labels, photo, parse_box(box)),
            self.note: (
                f"The box, in {out.ms:.0f} ms ({md(out.method)}). Paint a stroke wherever it is wrong and press "
                "**Fill**, or **Save** it as it is."
            ),
        }

    @user_errors
    def corner(self, token: Any, current: Any, box: Any, evt: gr.SelectData) -> Any:
        """A click on the preview: the first corner of a new box, or the second of the one begun."""
        labels = self.tab.set_of(token)
        if not current:
            raise gr.Error("Add a photo first.")
        photo = labels.get(current)
        index = evt.index if isinstance(evt.index, list | tuple) else ()
        if len(index) != 2 or not all(isinstance(v, int | float) for v in index):
            return {self.box_text: gr.skip(), self.preview: gr.skip()}
        f = self.scale(photo)  # the preview is drawn larger than the photo
        x = min(max(float(index[0]) / f, 0.0), photo.width)
        y = min(max(float(index[1]) / f, 0.0), photo.height)
        parts = [p for p in str(box or "")[:200].replace(" ", "").split(",") if p]
        try:
            begun = [float(v) for v in parts] if len(parts) == 2 else []
        except ValueError:
            begun = []
        corners = (*begun, x, y) if begun else (x, y)
        try:
            drawn = parse_box(list(corners)) if len(corners) == 4 else corners
        except DataError:
            drawn = (x, y)
        text = ", ".join(f"{v:.0f}" for v in drawn)
        return {self.box_text: text, self.preview: self.picture(labels, photo, drawn)}
