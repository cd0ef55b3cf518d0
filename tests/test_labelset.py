"""segdemo.server.labelset: painted layers -> class ids, one owner's set on disk, the zip the app reads back, expiry."""

from __future__ import annotations

import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdemo.core.config import DataConfig
from segdemo.data import check_source, open_dataset
from segdemo.data.base import IGNORE
from segdemo.errors import DataError, LimitError
from segdemo.server import labelset
from segdemo.server.labelset import (
    ALPHA_MIN,
    LABEL_COLORS,
    LabelStore,
    layer_from_mask,
    mask_from_layers,
    parse_class_names,
)
from tests.payloads import png_claiming

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("shapes_*.png"))
C3 = LABEL_COLORS[:3]


def _layer(h: int, w: int) -> np.ndarray:
    return np.zeros((h, w, 4), np.uint8)


# -- layers -> class ids ----------------------------------------------------------------------------------


def test_painted_pixels_take_their_class_and_unpainted_ones_are_ignored():
    lay = _layer(3, 4)
    lay[0, 0] = (*C3[0], 153)  # class 0 at the brush's see-through alpha
    lay[0, 1] = (*C3[2], 255)  # class 2, opaque
    lay[1, 1] = (*C3[1], ALPHA_MIN - 1)  # too faint to count: an anti-aliased fringe
    lay[2, 3] = (C3[1][0] - 10, C3[1][1] + 10, C3[1][2], 200)  # near class 1's colour: class 1
    ids = mask_from_layers([lay], (3, 4), C3)
    expected = np.full((3, 4), IGNORE, np.uint8)
    expected[0, 0], expected[0, 1], expected[2, 3] = 0, 2, 1
    np.testing.assert_array_equal(ids, expected)


def test_a_higher_layer_covers_a_lower_one():
    low, high = _layer(2, 2), _layer(2, 2)
    low[:, :] = (*C3[0], 153)
    high[0, 0] = (*C3[1], 153)
    ids = mask_from_layers([low, high], (2, 2), C3)
    np.testing.assert_array_equal(ids, [[1, 0], [0, 0]])


def test_round_trip_through_a_layer_keeps_every_id():
    rng = np.random.default_rng(0)
    mask = rng.choice([0, 1, 2, IGNORE], size=(37, 53)).astype(np.uint8)
    layer = layer_from_mask(mask, C3)
    assert layer.shape == (37, 53, 4) and set(np.unique(layer[..., 3])) == {0, round(255 * labelset.BRUSH_ALPHA)}
    np.testing.assert_array_equal(mask_from_layers([layer], (37, 53), C3), mask)


def test_a_few_stray_colours_are_left_unlabelled_but_many_are_refused():
    lay = _layer(20, 20)
    lay[:, :] = (*C3[0], 153)
    lay[0, :5] = (128, 128, 128, 255)  # 5 of 400: edges where two classes blend
    ids = mask_from_layers([lay], (20, 20), C3)
    assert (ids[0, :5] == IGNORE).all() and (ids[1:] == 0).all()
    lay[:10] = (128, 128, 128, 255)  # half the picture in a colour no class has
    with pytest.raises(DataError, match=r"belong to no class.*\(128, 128, 128\).*class colours only"):
        mask_from_layers([lay], (20, 20), C3)


def test_a_layer_of_another_size_is_refused_never_stretched():
    with pytest.raises(DataError, match="layer is 30x20 pixels but the photo is 40x30"):
        mask_from_layers([_layer(20, 30)], (30, 40), C3)
    with pytest.raises(DataError, match="not an RGBA picture"):
        mask_from_layers([np.zeros((30, 40, 3), np.uint8)], (30, 40), C3)


# -- class names --------------------------------------------------------------------------------------------


def test_class_names_are_checked():
    assert parse_class_names(" background, cat ,\n dog ") == ["background", "cat", "dog"]
    assert parse_class_names(["sky", "<b>road</b>"]) == ["sky", "<b>road</b>"]  # kept as text; escaped where shown
    for bad, words in [
        ("cat", "between 2 and 5"),
        ("a, b, c, d, e, f", r"between 2 and 5 classes.*\(you gave 6\)"),
        ("cat, Cat", "two classes are called"),
        ("cat, d\x00og", "control characters"),
        ("cat, " + "x" * 41, "at most 40 characters"),
        (None, "as text"),
    ]:
        with pytest.raises(DataError, match=words):
            parse_class_names(bad)


# -- one owner's set ------------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path) -> LabelStore:
    return LabelStore(tmp_path / "labelsets", ttl_s=3600)


def _paint_truth(labels, photo, k: int) -> None:
    """Store the example's true mask (ids 0..3) as the painted mask, ids >= k left unlabelled."""
    truth = np.array(Image.open(ROOT / "examples" / "masks" / photo.name))
    truth[truth >= k] = IGNORE
    labels.save_mask(photo.id, truth.astype(np.uint8))


def test_photos_masks_and_progress(store):
    labels = store.for_owner("owner-a")
    assert labels.photos() == [] and str(labels.progress()) == "0 of 0 labelled"
    photos = [labels.add_photo(p, p.name) for p in EXAMPLES[:3]]
    assert [p.stem for p in photos] == ["shapes_1", "shapes_2", "shapes_3"]
    assert (photos[0].width, photos[0].height) == (128, 128)
    np.testing.assert_array_equal(labels.mask(photos[0]), np.full((128, 128), IGNORE, np.uint8))
    _paint_truth(labels, photos[1], 2)
    prog = labels.progress()
    assert (prog.labelled, prog.total, str(prog)) == (1, 3, "1 of 3 labelled")
    assert sum(prog.class_pixels) == int((labels.mask(photos[1]) != IGNORE).sum()) > 0
    with Image.open(labels.folder / "masks" / f"{photos[1].id}.png") as im:
        assert im.mode == "P"  # ids as palette indices, 255 = unlabelled
    again = labels.add_photo(EXAMPLES[0], EXAMPLES[0].name)
    assert again.stem == "shapes_1-2"  # one file name per photo in the dataset
    labels.remove_photo(again.id)
    assert len(labels.photos()) == 3 and not (labels.folder / "photos" / f"{again.id}.jpg").exists()


def test_big_photos_shrink_and_bad_files_are_refused(store, tmp_path):
    labels = store.for_owner("owner-a")
    big = tmp_path / "big.png"
    Image.fromarray(np.full((900, 1200, 3), 90, np.uint8)).save(big)
    p = labels.add_photo(big, "big.png")
    assert (p.width, p.height) == (384, 288)
    with pytest.raises(DataError, match="claims 900,000,000 pixels"):
        labels.add_photo(png_claiming(tmp_path / "bomb.png", 30000, 30000), "bomb.png")
    fake = tmp_path / "page.png"
    fake.write_text("<html><script>alert(1)</script></html>")
    with pytest.raises(DataError, match="not a supported image"):
        labels.add_photo(fake, "page.png")
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (8, 40)).save(tiny)
    with pytest.raises(DataError, match="too small"):
        labels.add_photo(tiny, "tiny.png")
    assert len(labels.photos()) == 1  # nothing half-added


def test_a_set_holds_at_most_max_photos(store, monkeypatch):
    monkeypatch.setattr(labelset, "MAX_PHOTOS", 2)
    labels = store.for_owner("owner-a")
    for p in EXAMPLES[:2]:
        labels.add_photo(p, p.name)
    with pytest.raises(LimitError, match="2 photos, the most it can hold"):
        labels.add_photo(EXAMPLES[2], EXAMPLES[2].name)


def test_save_layers_reads_files_capped_at_the_photo_size(store, tmp_path):
    labels = store.for_owner("owner-a")
    photo = labels.add_photo(EXAMPLES[0], EXAMPLES[0].name)
    colors = labels.classes().colors
    lay = _layer(128, 128)
    lay[10:20, 10:30] = (*colors[1], 153)
    Image.fromarray(lay, "RGBA").save(tmp_path / "layer.png")
    saved = labels.save_layers(photo.id, [str(tmp_path / "layer.png")])
    assert saved.counts == (0, 200) and saved.labelled
    # a layer file claiming a huge size is refused from its header, before any pixel is decoded
    with pytest.raises(DataError, match="more than the limit of 16,384 pixels"):
        labels.save_layers(photo.id, [str(png_claiming(tmp_path / "huge.png", 20000, 20000))])
    with pytest.raises(DataError, match="layers sent"):
        labels.save_layers(photo.id, [str(tmp_path / "layer.png")] * 5)
    assert labels.get(photo.id).counts == (0, 200)  # the refusals changed nothing


def test_classes_rename_grow_and_refuse_to_drop_a_painted_one(store):
    labels = store.for_owner("owner-a")
    photo = labels.add_photo(EXAMPLES[0], EXAMPLES[0].name)
    labels.set_classes(["bg", "circle", "square", "triangle"])
    _paint_truth(labels, photo, 4)
    assert labels.get(photo.id).counts[2] > 0  # shapes_1 has a square
    with pytest.raises(DataError, match=r"painted as 'square' \(class 3\); erase them, or keep 3 classes"):
        labels.set_classes(["bg", "circle"])
    classes = labels.set_classes(["ground", "round", "boxy", "pointy"])
    assert classes.names == ("ground", "round", "boxy", "pointy") and classes.colors == LABEL_COLORS[:4]
    assert labels.get(photo.id).labelled  # renaming kept the paint


def test_the_zip_is_a_folder_dataset_the_app_reads_back(store, tmp_path):
    labels = store.for_owner("owner-a")
    with pytest.raises(DataError, match="no photo is labelled yet"):
        labels.write_zip(tmp_path / "none.zip")
    labels.set_classes(["bg", "circle", "square", "triangle"])
    photos = [labels.add_photo(p, p.name) for p in EXAMPLES]
    for p in photos[:3]:
        _paint_truth(labels, p, 4)
    z = labels.write_zip(tmp_path / "mine.zip")
    names = set(zipfile.ZipFile(z).namelist())
    assert {f"segdemo-labels/{n}" for n in ("classes.json", "images/shapes_1.jpg", "masks/shapes_3.png")} <= names
    assert not any("shapes_4" in n for n in names)  # only labelled photos go in
    report = check_source(DataConfig(source=str(z)))
    assert report.ok, report.problems
    splits = open_dataset(DataConfig(source=str(z)), tmp_path / "run")
    assert splits.classes.names == ("bg", "circle", "square", "triangle")
    assert splits.classes.colors == LABEL_COLORS[:4]
    assert len(splits.train) + len(splits.val) == 3
    for source in (splits.train, splits.val):
        for i in range(len(source)):
            name = source.name(i)
            image, mask = source.load(i)
            truth = np.array(Image.open(ROOT / "examples" / "masks" / f"{name}.png"))
            np.testing.assert_array_equal(mask, truth)  # every id, exactly, after the trip through the zip
            assert image.shape == (128, 128, 3)


def test_owners_are_kept_apart(store):
    a, b = store.for_owner("owner-a"), store.for_owner("owner-b")
    photo = a.add_photo(EXAMPLES[0], EXAMPLES[0].name)
    assert a.folder != b.folder and a.folder.parent == b.folder.parent
    assert "owner-a" not in str(a.folder)  # the folder is named by a hash, never the token
    with pytest.raises(DataError) as other:
        b.get(photo.id)
    with pytest.raises(DataError) as made_up:
        b.get("0123abcd")
    assert str(other.value) == str(made_up.value)  # another's photo reads like one that does not exist
    for hostile in ("../../etc", "*", 12, None, photo.id + "/"):
        with pytest.raises(DataError):
            a.get(hostile)
    assert b.photos() == [] and len(a.photos()) == 1


def test_sets_expire_after_ttl_and_only_ours_are_swept(store, tmp_path):
    old, fresh = store.for_owner("old"), store.for_owner("fresh")
    old.add_photo(EXAMPLES[0], EXAMPLES[0].name)
    fresh.add_photo(EXAMPLES[0], EXAMPLES[0].name)
    stranger = store.root / "not-ours"
    stranger.mkdir()
    hour_ago = time.time() - 7200
    os.utime(old.folder / "set.json", (hour_ago, hour_ago))
    os.utime(stranger, (hour_ago, hour_ago))
    assert store.sweep() == 1
    assert not old.folder.exists() and fresh.folder.exists() and stranger.exists()
    assert json.loads((fresh.folder / "set.json").read_text())["photos"]


def test_shows_tells_a_photo_from_another(store, tmp_path):
    """The editor's background says which photo its paint belongs to (a loading editor still shows the last)."""
    labels = store.for_owner("owner-a")
    p1, p2 = (labels.add_photo(p, p.name) for p in EXAMPLES[:2])
    sent = tmp_path / "background.png"
    Image.fromarray(labels.image(p1)).save(sent)  # what a browser sends back: the photo it was given, as PNG
    assert labels.shows(p1, sent) and labels.shows(p1, EXAMPLES[0])  # the upload itself, before JPEG, too
    assert not labels.shows(p1, EXAMPLES[1]) and not labels.shows(p2, sent)
    Image.fromarray(labels.image(p1)[:100]).save(tmp_path / "cropped.png")
    assert not labels.shows(p1, tmp_path / "cropped.png")
    assert not labels.shows(p1, png_claiming(tmp_path / "bomb.png", 30000, 30000))  # never decoded
