"""Label tab: make a small dataset in the browser. Add photos (or webcam shots), name 2-5 classes, paint each
photo with a brush per class, then train on them in the Train tab or download them as a dataset zip.

The set lives on the server in this browser's own folder (segdemo/server/labelset.py); every handler finds it by
the browser's owner token, so no other browser can read, change or download it.

Painting uses gr.ImageEditor with these choices, each working around a known limit of drawing masks in it
(gradio issues 7911 and 10990; see the README):
- one layer, fixed brush colours (one per class) at opacity BRUSH_ALPHA: the photo stays visible under
  the paint, and a class is read back from the layer's colour, never from the composite (which mixes in
  the photo); every painted pixel takes the nearest class colour, so anti-aliased edges can't add classes;
- the canvas is set to each photo's own size and cropping is off: a saved mask put back as a layer lands
  exactly on its photo (with another canvas size gradio places the layer off by the difference);
- the handlers read the layer files themselves (preprocess=False), each capped at the photo's pixel
  count, so no oversized picture is ever decoded; and the editor's in-memory blob store is off
  (refuse_editor_blobs), since nothing here uses it and any visitor could fill it.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import cv2
import gradio as gr
import numpy as np
from gradio.components.base import server

from segdemo.core import pretrained
from segdemo.core.viz import legend_html, overlay
from segdemo.data.base import coverage_notes
from segdemo.imageio import IMAGE_SUFFIXES
from segdemo.server import labelset
from segdemo.server.labelset import SET_FILE, LabelSet, LabelStore, Photo
from segdemo.server.limits import ByteQuota, ensure_free_disk
from segdemo.ui.context import AppContext, client_of
from segdemo.ui.errors import user_errors
from segdemo.ui.label_assist import AssistPanel, layer_files
from segdemo.ui.listeners import HEAVY
from segdemo.ui.words import md

log = logging.getLogger(__name__)
IMAGE_TYPES = sorted(IMAGE_SUFFIXES)
THUMB_SIDE = 160
ZIP_NAME = "labelled-photos.zip"
INSTANT = "instant"  # the preset "Train on these" picks (recipes.PRESETS)
# photos one address may add to label sets in an hour: a class of 30 behind one router, 2-3 full sets each
PHOTOS_PER_HOUR = int(os.environ.get("SEGDEMO_LABEL_PHOTOS_PER_HOUR") or 2000)
STILL_LOADING = (
    "The editor was still loading this photo, so what it sent belongs to the previous one. Wait a moment "
    "until the photo shows, paint it, and press Save again."
)
RULE = (
    "**Pick a class by its colour** in the editor's palette (the colour button on the left), then paint. "
    "**Unpainted pixels are ignored**: they count neither for nor against the model, so a few confident "
    "strokes per class are enough, as long as every class gets some (paint the background too). "
    "**Fill** then labels the rest of the photo from your strokes, and a **box** (two clicks on the preview) "
    "proposes one object; the preview shows what Save stores. Once two photos are saved, the next ones open "
    "**pre-labelled** by a model learned from them: correct what is wrong. Use the eraser for mistakes and the "
    "size button for a bigger or smaller brush. **Save** before you pick another photo (choosing one from the "
    "list or the thumbnails saves the current one for you)."
)


def refuse_editor_blobs() -> None:
    """Make every gr.ImageEditor refuse the blobs sent to its `accept_blobs`.

    Gradio keeps those blobs in a dict on the component until an event reads them, and any visitor may
    call `accept_blobs` with fresh ids: memory without end. The editor only sends them to events listening
    to its changes, and this app has none; it reads the painted layer from the event's files instead. A
    class attribute, because Gradio rebuilds a component of the same class for each session's updates.
    (A subclass would do, but gradio writes a .pyi stub beside any module that defines one.)
    """
    if getattr(gr.ImageEditor.accept_blobs, "segdemo_refuses", False):
        return

    @server
    def accept_blobs(self, data: Any = None) -> Any:  # noqa: ARG001 - the signature gradio calls
        return None

    accept_blobs.segdemo_refuses = True
    gr.ImageEditor.accept_blobs = accept_blobs  # type: ignore[method-assign]  # a patch, checked by its test


def _brush(classes: Any) -> gr.Brush:
    colors: list[str | tuple[str, float]] = [
        ("#" + "".join(f"{v:02x}" for v in c), labelset.BRUSH_ALPHA) for c in classes.colors
    ]
    return gr.Brush(colors=colors, default_color=colors[0], color_mode="fixed", default_size="auto")


def _state(p: Photo) -> str:
    """A photo's state in the list: labelled or not, and how much the model had right."""
    if not p.labelled:
        return "(not labelled yet)"
    return f"✓ (the model had {p.kept:.0%} right)" if p.kept is not None else "✓"


def _file_path(payload: Any) -> str | None:
    """The file path of a raw file payload (a FileData dict), or None."""
    if isinstance(payload, dict) and isinstance(payload.get("path"), str):
        return payload["path"]
    return None


class LabelTab:
    """Builds the tab's widgets (inside an open gr.Tab) and wires its events."""

    def __init__(self, ctx: AppContext, token: gr.BrowserState) -> None:
        self.ctx, self.token = ctx, token
        # beside the run folders, swept like them: a set goes ttl_s after its last change
        self.store = LabelStore(ctx.jobs.root_dir / "labelsets", ttl_s=ctx.jobs.ttl_s)
        self.stored_photos = ByteQuota(PHOTOS_PER_HOUR, 3600, unit="photos")  # per address
        default = labelset.class_set(labelset.DEFAULT_CLASSES)
        gr.Markdown(
            "Make your own dataset: add a handful of photos, name the classes, paint each photo, then train "
            f"on them. Your photos and masks stay on this server in this browser's own folder for "
            f"{ctx.jobs.ttl_s / 3600:g} h after your last change; nobody else can see them."
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                self._photos_section()
                self._classes_section(default)
            with gr.Column(scale=3, min_width=420):
                self._paint_section(default)
                self.assist = AssistPanel(self)
                self._use_section()
        self.view = [
            *(self.photo, self.current, self.editor, self.progress, self.gallery, self.legend, self.class_names),
            *self.assist.outputs,
        ]

    def _photos_section(self) -> None:
        gr.Markdown("### 1. Photos")
        self.photos_in = gr.File(
            label=f"Add photos (up to {labelset.MAX_PHOTOS}; each is shrunk to {labelset.LABEL_MAX_SIDE} px)",
            file_count="multiple",
            file_types=IMAGE_TYPES,
            elem_id="label-upload",
            height=120,
        )
        with gr.Accordion("…or take photos with the webcam", open=False):
            self.webcam = gr.Image(
                sources=["webcam"], type="filepath", label="Webcam", elem_id="label-webcam", height=240
            )
            self.webcam_btn = gr.Button("Add this webcam photo", size="sm", elem_id="label-webcam-add")

    def _classes_section(self, default: Any) -> None:
        gr.Markdown("### 2. Classes")
        self.class_names = gr.Textbox(
            ", ".join(default.names),
            label=f"Class names, {labelset.MIN_CLASSES} to {labelset.MAX_CLASSES}, separated by commas",
            info="Class 1 is usually the background. Applied when you press Enter or click elsewhere.",
            elem_id="label-classes",
            max_length=400,
        )
        self.legend = gr.HTML(self._legend(default), elem_id="label-legend")
        gr.Markdown(RULE)

    def _paint_section(self, default: Any) -> None:
        gr.Markdown("### 3. Paint")
        with gr.Row():
            self.photo = gr.Dropdown([], label="Photo", elem_id="label-photo", scale=3, allow_custom_value=False)
            self.remove_btn = gr.Button("Remove this photo", size="sm", scale=1, elem_id="label-remove")
        self.current = gr.State(None)  # the id of the photo in the editor, whose paint Save stores
        refuse_editor_blobs()
        self.editor = gr.ImageEditor(
            label="Paint the classes on the photo",
            elem_id="label-editor",
            sources=(),  # the photo comes from the list above, so its mask always matches it
            transforms=(),  # no crop: a cropped canvas would no longer match its photo
            layers=False,  # one layer: class = colour
            brush=_brush(default),
            eraser=gr.Eraser(default_size="auto"),
            format="png",  # lossless: a layer's colours must come back exact
            image_mode="RGBA",
            canvas_size=(labelset.LABEL_MAX_SIDE, labelset.LABEL_MAX_SIDE * 3 // 4),
            height=560,
            buttons=["fullscreen"],
        )
        with gr.Row():
            self.save_btn = gr.Button("Save", elem_id="label-save")
            self.next_btn = gr.Button("Save and next photo", variant="primary", elem_id="label-next")

    def _use_section(self) -> None:
        self.gallery = gr.Gallery(
            label="Your photos with their labels (click one to paint it)",
            columns=6,
            height=200,
            format="jpeg",
            object_fit="contain",
            allow_preview=False,
            elem_id="label-gallery",
        )
        gr.Markdown("### 4. Use them")
        self.progress = gr.Markdown("No photos yet: add some above.", elem_id="label-progress")
        with gr.Row():
            self.train_btn = gr.Button("Train on these", variant="primary", elem_id="label-train")
            self.download_btn = gr.Button("Download dataset (zip)", elem_id="label-download")
        self.download_file = gr.File(
            label="Your dataset: images/, masks/ (class ids, 255 = unlabelled) and classes.json",
            interactive=False,
            visible=False,
            elem_id="label-zip",
        )

    # -- wiring -----------------------------------------------------------------------------------------

    def wire(self, demo: gr.Blocks, tabs: gr.Tabs, train: Any) -> None:
        """`tabs` and `train` (the TrainTab): "Train on these" opens the Train tab with this dataset chosen."""
        self._tabs, self._train = tabs, train
        # The spinner shows on the photo list and the progress line, never on the editor: gradio 6.31 now and
        # then leaves the editor's own "processing" overlay up for good after it receives a new photo (seen
        # in about one of ten switches here, under load more), covering a canvas that has loaded and works.
        shown: dict[str, Any] = dict(show_progress_on=[self.photo, self.progress])
        raw: dict[str, Any] = dict(
            preprocess=False, concurrency_id=HEAVY, **shown
        )  # editor and webcam payloads are read here, capped
        paint = [self.token, self.current, self.editor]
        self.photos_in.upload(
            self.add_photos,
            [self.token, self.photos_in],
            [*self.view, self.photos_in],
            api_name="label_add",
            concurrency_id=HEAVY,
            **shown,
        )
        self.webcam_btn.click(
            self.add_webcam, [self.token, self.webcam], [*self.view, self.webcam], api_name="label_webcam", **raw
        )
        self.class_names.submit(
            self.set_classes, [self.token, self.class_names, *paint[1:]], self.view, api_name="label_classes", **raw
        )
        # a hasty student types the names and goes straight to painting: leaving the box applies them too
        self.class_names.blur(
            self.set_classes_if_changed,
            [self.token, self.class_names, *paint[1:]],
            self.view,
            api_visibility="private",
            **raw,
        )
        self.photo.input(self.open_photo, [*paint, self.photo], self.view, api_name="label_open", **raw)
        self.gallery.select(self.open_from_gallery, paint, self.view, api_visibility="private", **raw)
        self.save_btn.click(self.save, paint, self.view, api_name="label_save", **raw)
        self.next_btn.click(self.save_next, paint, self.view, api_name="label_next", **raw)
        self.remove_btn.click(
            self.remove, [self.token, self.current], self.view, api_name="label_remove", concurrency_id=HEAVY, **shown
        )
        self.train_btn.click(
            self.train_on_these,
            paint,
            [*self.view, tabs, train.dataset, train.zip_file, train.preset],
            api_name="label_train",
            **raw,
        )
        self.download_btn.click(
            self.download, paint, [*self.view, self.download_file], api_name="label_download", **raw
        )
        self.assist.wire(self.token, self.current, self.editor, shown)
        demo.load(self.reattach, self.token, self.view, api_visibility="private", concurrency_id=HEAVY, **shown)
        gr.api(self.info, api_name="label_info", concurrency_limit=None)

    # -- the page's view of a set ------------------------------------------------------------------------

    def _set(self, token: Any) -> LabelSet:
        return self.store.for_owner(self.ctx.owner(token))

    set_of = _set  # for the assist panel

    @staticmethod
    def _legend(classes: Any) -> str:
        swatches = legend_html(classes)  # escapes the names
        return (
            '<div style="font-size:0.9em;opacity:0.8">Brush colours (the palette in the editor, in this '
            "order):</div>" + swatches
        )

    def _view(
        self, labels: LabelSet, show: Photo | None | str = "keep", names_text: bool = False, saved: Photo | None = None
    ) -> dict:
        """Every part of the tab from the set on disk. show: a photo to put in the editor, None for an empty
        editor, or "keep" to leave the editor (and its undo history) as it is; `saved`: the photo just saved.
        A photo shown is pre-labelled by the set's model when it can (the assist panel)."""
        assist = self.assist.updates(labels, show, saved)  # first: a guess changes what the photo shows
        classes, photos, prog = labels.classes(), labels.photos(), labels.progress()
        choices = [(f"{i + 1}. {p.name} {_state(p)}", p.id) for i, p in enumerate(photos)]
        out = {
            self.photo: gr.update(choices=choices),
            self.progress: self._progress_md(prog, classes, photos),
            self.gallery: [self._thumb(labels, p, classes) for p in photos],
            self.legend: self._legend(classes),
            self.class_names: ", ".join(classes.names) if names_text else gr.skip(),
            self.current: gr.skip(),
            self.editor: gr.skip(),
            **assist,
        }
        if not isinstance(show, str):  # a photo, or None for an empty editor ("keep" leaves it)
            out[self.current] = show.id if show else None
            out[self.photo] = gr.update(choices=choices, value=show.id if show else None)
            update: dict[str, Any] = {"value": None}
            if show is not None:
                layer = labelset.layer_from_mask(labels.strokes(show), classes.colors)  # the strokes alone
                update = {
                    "value": {"background": self._served(labels, show), "layers": [layer], "composite": None},
                    # Always, even when unchanged: the layer must land on its photo pixel for pixel, and an
                    # editor that has been painted on and gets a new value alone goes blank for good.
                    "canvas_size": (show.width, show.height),
                }
            if names_text:  # the class colours changed, or the page is new: the palette follows
                update["brush"] = _brush(classes)
            out[self.editor] = gr.update(**update)
        return out

    def _served(self, labels: LabelSet, photo: Photo) -> str:
        """The photo for the editor: its stored JPEG, copied where Gradio may serve it (the set's folder never
        is). Not a picture array, which Gradio would send as a PNG several times the size: the editor sends
        its photo back with every event that reads it, and more than once (see refuse_editor_blobs)."""
        src = labels.photo_file(photo)
        st = src.stat()  # one served copy per stored photo, however often it is shown
        key = ("label-photo", str(src), st.st_size, st.st_mtime_ns)
        return self.ctx.served(key, f"{photo.stem}.jpg", lambda dst: shutil.copyfile(src, dst))

    @staticmethod
    def _progress_md(prog: Any, classes: Any, photos: Any) -> str:
        if prog.total == 0:
            return "No photos yet: add some above."
        lines = [f"**{prog.labelled} of {prog.total} labelled**"]
        painted = sum(prog.class_pixels)
        if painted:
            shares = " · ".join(
                f"{md(n)} {100 * c / painted:.0f}%" for n, c in zip(classes.names, prog.class_pixels, strict=True)
            )
            lines.append(f"Painted pixels per class: {shares}")
            missing = [n for n, c in zip(classes.names, prog.class_pixels, strict=True) if c == 0]
            if missing:
                lines.append(
                    "No photo has **" + "**, **".join(md(n) for n in missing) + "** painted yet: the net learns "
                    "only the classes it is shown."
                )
        labelled = [p for p in photos if p.labelled]
        if labelled:
            k = classes.num_classes
            presence = np.array([[i < len(p.counts) and p.counts[i] > 0 for i in range(k)] for p in labelled])
            lines += [f"⚠ {md(t)}" for t in coverage_notes(classes.names, presence)]
        kept = [f"{md(p.name)} {p.kept:.0%}" for p in labelled if p.kept is not None]
        if kept:
            lines.append("The model had right (of the pixels you saved): " + " · ".join(kept))
        todo = labelset.MIN_TO_TRAIN - prog.labelled
        lines.append(
            f"Label {todo} more to train (one photo is kept aside to check the model)."
            if todo > 0
            else "Ready: press **Train on these**, or label more photos first (more photos, better model)."
        )
        return "  \n".join(lines)

    @staticmethod
    def _thumb(labels: LabelSet, p: Photo, classes: Any) -> tuple[np.ndarray, str]:
        image, mask = labels.image(p), labels.mask(p)
        f = THUMB_SIDE / max(p.width, p.height)
        if f < 1:
            size = (max(1, round(p.width * f)), max(1, round(p.height * f)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        return overlay(image, mask, classes, 0.5), ("✓ " if p.labelled else "") + p.name

    def _shown_photo(self, labels: LabelSet, current: Any, editor: Any, asked: bool) -> Photo | None:
        """The photo the editor shows, whose paint it sent; None (or gr.Error when the student `asked`) when
        there is none, or when the editor still holds the previous photo.

        The editor loads a photo a moment after the page switches to it; until then it still holds the previous
        photo and its paint (already saved when the page switched). That paint is never stored onto the new
        photo, nor filled: an automatic save skips it, and a button the student pressed says to wait."""
        background = _file_path(editor.get("background")) if isinstance(editor, dict) else None
        if not current or background is None:
            if asked:
                raise gr.Error("Add a photo and paint on it first.")
            return None
        photo = labels.get(current)
        if not labels.shows(photo, background):
            if asked:
                raise gr.Error(STILL_LOADING)
            log.info("skipped paint sent with another photo than %s (the editor was still loading)", photo.id)
            return None
        return photo

    def editing(self, labels: LabelSet, current: Any, editor: Any) -> Photo:
        """The photo in the editor, checked as a Save checks it (for Fill and the box)."""
        layer_files(editor)  # a payload that is no editor value gets its sentence first
        photo = self._shown_photo(labels, current, editor, asked=True)
        assert photo is not None
        return photo

    def _save_current(self, labels: LabelSet, current: Any, editor: Any, asked: bool = False) -> Photo | None:
        """Store the editor's paint (over the fill the preview shows, if any) as the mask of the photo it shows;
        the photo, or None when there is none or the editor still shows another (see _shown_photo)."""
        files = layer_files(editor)
        photo = self._shown_photo(labels, current, editor, asked)
        return labels.save_layers(photo.id, files) if photo else None

    @staticmethod
    def _pick(photos: list[Photo], after: str | None = None) -> Photo | None:
        """The next photo to paint: the first unlabelled one after `after` (wrapping), else the one after it."""
        if not photos:
            return None
        ids = [p.id for p in photos]
        start = ids.index(after) + 1 if after in ids else 0
        order = photos[start:] + photos[:start]
        return next((p for p in order if not p.labelled), order[0])

    # -- handlers -------------------------------------------------------------------------------------------

    def _admit(self, request: Any, n: int) -> None:
        """Stored photos are bounded per browser (labelset.MAX_PHOTOS) and per address (a classroom behind one
        router shares one: PHOTOS_PER_HOUR), and never fill the disk."""
        ensure_free_disk(self.store.root)
        self.stored_photos.take(client_of(request), n)

    @user_errors
    def add_photos(self, token: Any, files: Any, request: gr.Request | None = None) -> Any:
        """Add uploaded photos to this browser's set; the first new one opens in the editor."""
        labels = self._set(token)
        if isinstance(files, str):
            files = [files]
        if not files:
            return {**self._view(labels), self.photos_in: None}
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise gr.Error("Send the photos as a list of image files.")
        if len(files) > labelset.MAX_PHOTOS:
            raise gr.Error(f"{len(files)} photos at once is more than a set holds ({labelset.MAX_PHOTOS}); send fewer.")
        self._admit(request, len(files))
        added = [labels.add_photo(f, Path(f).name) for f in files]
        return {**self._view(labels, show=added[0]), self.photos_in: None}

    @user_errors
    def add_webcam(self, token: Any, image: Any, request: gr.Request | None = None) -> Any:
        """Add the webcam's snapshot (a raw image payload) to the set and open it."""
        labels = self._set(token)
        path = _file_path(image)
        if path is None:
            raise gr.Error("Take a photo with the webcam first (the camera button under its picture).")
        self._admit(request, 1)
        photo = labels.add_photo(path, f"webcam-{len(labels.photos()) + 1}.png")
        return {**self._view(labels, show=photo), self.webcam: None}

    @user_errors
    def set_classes(self, token: Any, names: Any, current: Any, editor: Any) -> Any:
        """Name the classes (2-5). The photo in the editor is saved first, with the colours it was painted in."""
        labels = self._set(token)
        self._save_current(labels, current, editor)
        labels.set_classes(names)
        photo = labels.get(current) if current else None
        return self._view(labels, show=photo, names_text=True)

    @user_errors
    def set_classes_if_changed(self, token: Any, names: Any, current: Any, editor: Any) -> Any:
        """set_classes when the box holds other names than the set's (leaving the box without a change keeps the
        editor and its undo history as they are)."""
        labels = self._set(token)
        try:
            same = labelset.parse_class_names(names) == list(labels.classes().names)
        except labelset.DataError:
            same = False  # set_classes says what is wrong with them
        if same:
            return {c: gr.skip() for c in self.view}
        return self.set_classes(token, names, current, editor)

    @user_errors
    def open_photo(self, token: Any, current: Any, editor: Any, photo_id: Any) -> Any:
        """Save the photo in the editor, then open `photo_id` (one of this browser's photos)."""
        labels = self._set(token)
        target = labels.get(photo_id)  # refuse a made-up or another browser's id before saving anything
        self._save_current(labels, current, editor)
        return self._view(labels, show=target)

    @user_errors
    def open_from_gallery(self, token: Any, current: Any, editor: Any, evt: gr.SelectData) -> Any:
        labels = self._set(token)
        photos = labels.photos()
        if not 0 <= evt.index < len(photos):
            return self._view(labels)
        self._save_current(labels, current, editor)
        return self._view(labels, show=labels.get(photos[evt.index].id))

    @user_errors
    def save(self, token: Any, current: Any, editor: Any) -> Any:
        """Store the editor's paint as the current photo's mask."""
        labels = self._set(token)
        saved = self._save_current(labels, current, editor, asked=True)
        return self._view(labels, saved=saved)

    @user_errors
    def save_next(self, token: Any, current: Any, editor: Any) -> Any:
        """Save, then open the next photo that has no labels yet."""
        labels = self._set(token)
        saved = self._save_current(labels, current, editor, asked=True)
        return self._view(labels, show=self._pick(labels.photos(), after=current), saved=saved)

    @user_errors
    def remove(self, token: Any, current: Any) -> Any:
        labels = self._set(token)
        if not current:
            raise gr.Error("Choose the photo to remove first.")
        labels.remove_photo(current)
        return self._view(labels, show=self._pick(labels.photos()))

    def _zip(self, labels: LabelSet) -> str:
        """The set as a dataset zip, in a scratch folder Gradio may serve (the set's own folder never is)."""
        doc = labels.folder / SET_FILE  # rewritten by every change to the set: its version
        st = doc.stat() if doc.is_file() else None
        key = ("label-zip", str(labels.folder), st and st.st_size, st and st.st_mtime_ns)
        return self.ctx.served(key, ZIP_NAME, labels.write_zip)

    @user_errors
    def train_on_these(self, token: Any, current: Any, editor: Any) -> Any:
        """Save, write the dataset zip and open the Train tab with it chosen."""
        labels = self._set(token)
        self._save_current(labels, current, editor)
        prog = labels.progress()
        if prog.labelled < labelset.MIN_TO_TRAIN:
            raise gr.Error(
                f"Label at least {labelset.MIN_TO_TRAIN} photos first ({prog}): one to learn from and one to "
                "check the model on."
            )
        train = self._train
        return {
            **self._view(labels),
            self._tabs: gr.Tabs(selected="train"),
            train.dataset: "zip",  # the Train tab's own zip path: checked, copied into the run, trained
            train.zip_file: self._zip(labels),
            # a few photos and a student waiting: the frozen ImageNet encoder gives a first prediction in seconds
            train.preset: INSTANT if pretrained.available() else gr.skip(),
        }  # the Train tab checks the zip, then its preset (a time budget) plans the settings for this set

    @user_errors
    def download(self, token: Any, current: Any, editor: Any) -> Any:
        """Save, then offer the labelled photos as a dataset zip (the format the Train tab reads back)."""
        labels = self._set(token)
        self._save_current(labels, current, editor)
        return {**self._view(labels), self.download_file: gr.update(value=self._zip(labels), visible=True)}

    def reattach(self, token: Any) -> Any:
        """On page load: this browser's set, if it has one, with the first photo to paint."""
        if not self.ctx.jobs.valid_owner_token(token):
            return dict.fromkeys(self.view, gr.skip())
        try:
            labels = self.store.for_owner(token)
            photos = labels.photos()
            if not photos:
                return dict.fromkeys(self.view, gr.skip())
            return self._view(labels, show=self._pick(photos), names_text=True)
        except Exception:  # a page load must never show an error box
            log.exception("showing a label set on page load failed")
            return dict.fromkeys(self.view, gr.skip())

    @user_errors
    def info(self, token: str) -> dict:
        """This browser's labelled set as JSON: classes, photos (id, name, size, labelled pixels per class)."""
        labels = self._set(token)
        classes, prog = labels.classes(), labels.progress()
        return {
            "classes": list(classes.names),
            "colors": [list(c) for c in classes.colors],
            "labelled": prog.labelled,
            "total": prog.total,
            "progress": str(prog),
            "class_pixels": list(prog.class_pixels),
            "photos": [
                {
                    "id": p.id,
                    "name": p.name,
                    "width": p.width,
                    "height": p.height,
                    "labelled": p.labelled,
                    "class_pixels": list(p.counts),
                    "model_kept": p.kept,  # the share of its saved pixels the model had guessed right, or None
                }
                for p in labels.photos()
            ],
        }
