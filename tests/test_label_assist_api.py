"""The Label tab's assisted labelling over HTTP (gradio_client), as the scripted student uses it: strokes fill the
photo, a box proposes an object, a photo opened after two saved ones comes pre-labelled and a correction is what
is saved; nothing is written outside the set's own folder, and only Save writes a photo's mask; hostile input
gets a sentence. A real server, real files, painted layers as PNGs."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image  # noqa: E402

from segdemo.data.base import IGNORE  # noqa: E402
from segdemo.server.labelset import LABEL_COLORS, layer_from_mask  # noqa: E402
from segdemo.server.tokens import hash_owner  # noqa: E402
from tests.conftest import api_session as session  # noqa: E402
from tests.conftest import in_process_app  # noqa: E402
from tests.payloads import png_claiming  # noqa: E402
from tests.test_fill import strokes_inside  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("shapes_*.png"))
# the outputs of every event that shows the set (LabelTab.view, gradio_client leaves out the State)
PROGRESS, PREVIEW, NOTE = 2, 6, 7


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with in_process_app(tmp_path_factory.mktemp("assist-app")) as (url, jobs, _):
        yield url, jobs.root_dir / "labelsets"


def truth_of(photo: Path) -> np.ndarray:
    """Background (0) versus any shape (1)."""
    return (np.array(Image.open(ROOT / "examples" / "masks" / photo.name)) > 0).astype(np.uint8)


def editor(tmp: Path, photo: Path, strokes: np.ndarray | None = None, k: int = 2) -> dict:
    """The editor's value as a browser sends it: the photo and one layer holding `strokes` (IGNORE unpainted)."""
    if strokes is None:
        strokes = np.full(truth_of(photo).shape, IGNORE, np.uint8)
    layer = tmp / f"{photo.stem}-{abs(hash(strokes.tobytes()))}.png"
    Image.fromarray(layer_from_mask(strokes, LABEL_COLORS[:k]), "RGBA").save(layer)
    return {"background": handle_file(str(photo)), "layers": [handle_file(str(layer))], "composite": None}


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def start(url: str, photos: list[Path]) -> tuple[Client, str, list[str]]:
    c, token = session(url)
    c.predict(token, [handle_file(str(p)) for p in photos], api_name="/label_add")
    c.predict(token, "background, object", None, api_name="/label_classes")
    ids = [p["id"] for p in c.predict(token, api_name="/label_info")["photos"]]
    return c, token, ids


def test_strokes_fill_the_photo_and_only_save_writes_its_mask(server, tmp_path):
    url, sets = server
    c, token, (photo_id,) = start(url, EXAMPLES[:1])
    folder = sets / hash_owner(token)
    before = files_of(folder)
    truth = truth_of(EXAMPLES[0])
    strokes = strokes_inside(truth)
    assert (strokes != IGNORE).mean() < 0.05  # a few strokes, not a painted photo
    preview, note = c.predict(token, editor(tmp_path, EXAMPLES[0], strokes), api_name="/label_fill")
    assert "Filled in" in note and "Save" in note
    assert Image.open(preview).size == (768, 768)  # the photo with the fill blended in, drawn at 768 px
    after = files_of(folder)
    # the fill is kept as this photo's proposal, in its own file; nothing else changed, no mask was written
    assert set(after) - set(before) == {f"proposals/{photo_id}.png"}
    assert all(after[k] == v for k, v in before.items())
    assert c.predict(token, api_name="/label_info")["labelled"] == 0
    proposal = np.array(Image.open(folder / "proposals" / f"{photo_id}.png"))
    assert (proposal[strokes != IGNORE] == strokes[strokes != IGNORE]).all()
    assert (proposal == truth).mean() > 0.9

    c.predict(token, editor(tmp_path, EXAMPLES[0], strokes), api_name="/label_save")  # accept: what was shown
    saved = np.array(Image.open(folder / "masks" / f"{photo_id}.png"))
    np.testing.assert_array_equal(saved, proposal)  # every pixel a class, exactly the preview's
    assert not (folder / "proposals" / f"{photo_id}.png").exists()
    kept = np.array(Image.open(folder / "strokes" / f"{photo_id}.png"))
    np.testing.assert_array_equal(kept, strokes)  # the strokes are kept apart: the editor gets them back
    out = c.predict(token, None, photo_id, api_name="/label_open")
    layer = np.array(Image.open(out[1]["value"]["layers"][0]))
    assert (layer[..., 3] > 0).sum() == (strokes != IGNORE).sum()  # the strokes to paint on, not the fill
    assert out[PREVIEW] is not None and "fill" in out[NOTE]


def test_a_box_proposes_the_object_and_a_second_stroke_corrects_it(server, tmp_path):
    url, sets = server
    c, token, (photo_id,) = start(url, EXAMPLES[2:3])
    truth = truth_of(EXAMPLES[2])
    ys, xs = np.nonzero(truth)
    box = f"{xs.min() - 4}, {ys.min() - 4}, {xs.max() + 4}, {ys.max() + 4}"
    preview, note = c.predict(token, editor(tmp_path, EXAMPLES[2]), box, "object", api_name="/label_box")
    assert "GrabCut" in note and Image.open(preview).size == (768, 768)
    folder = sets / hash_owner(token)
    proposal = np.array(Image.open(folder / "proposals" / f"{photo_id}.png"))
    assert set(np.unique(proposal)) == {0, 1} and (proposal == truth).mean() > 0.85
    c.predict(token, editor(tmp_path, EXAMPLES[2]), box, 1, api_name="/label_box")  # the class by index too
    strokes = strokes_inside(truth)
    c.predict(token, editor(tmp_path, EXAMPLES[2], strokes), api_name="/label_fill")  # strokes refine the box
    c.predict(token, editor(tmp_path, EXAMPLES[2], strokes), api_name="/label_save")
    saved = np.array(Image.open(folder / "masks" / f"{photo_id}.png"))
    assert IGNORE not in saved and (saved == truth).mean() > 0.9


def test_a_photo_opened_after_two_saved_ones_comes_prelabelled_and_its_correction_is_saved(server, tmp_path):
    url, sets = server
    c, token, ids = start(url, EXAMPLES[:3])
    folder = sets / hash_owner(token)
    for photo in EXAMPLES[:2]:
        strokes = strokes_inside(truth_of(photo))
        c.predict(token, editor(tmp_path, photo, strokes), api_name="/label_fill")
        out = c.predict(token, editor(tmp_path, photo, strokes), api_name="/label_next")
    assert "learned from 2 saved photos" in out[NOTE]  # the third opened with the model's guess
    assert out[PREVIEW] is not None
    guess = np.array(Image.open(folder / "guesses" / f"{ids[2]}.png"))
    assert IGNORE not in guess and (guess == truth_of(EXAMPLES[2])).mean() > 0.8
    assert not (folder / "masks" / f"{ids[2]}.png").exists()  # a guess is no label until it is saved
    # the student corrects a patch (paints it background), and saves without pressing Fill
    fix = np.full(guess.shape, IGNORE, np.uint8)
    fix[2:10, 2:40] = 0
    fix[60:64, 60:70] = 1
    out = c.predict(token, editor(tmp_path, EXAMPLES[2], fix), api_name="/label_save")
    saved = np.array(Image.open(folder / "masks" / f"{ids[2]}.png"))
    np.testing.assert_array_equal(saved, np.where(fix != IGNORE, fix, guess))  # the guess, corrected
    photo = c.predict(token, api_name="/label_info")["photos"][2]
    changed = (saved != guess).mean()
    assert photo["model_kept"] == pytest.approx(1 - changed, abs=1e-3) and photo["model_kept"] < 1
    assert "the model had" in out[NOTE] and f"{photo['model_kept']:.0%}" in out[NOTE]
    assert "The model had right" in out[PROGRESS]
    # each save retrains it: the model now learns from three photos
    out = c.predict(token, [handle_file(str(EXAMPLES[3]))], api_name="/label_add")  # opens the new photo
    assert "learned from 3 saved photos" in out[NOTE]
    out = c.predict(token, None, ids[0], api_name="/label_open")
    assert "fill" in out[NOTE]  # a saved photo shows what was saved
    fourth = c.predict(token, api_name="/label_info")["photos"][3]["id"]
    out = c.predict(token, None, fourth, api_name="/label_open")
    assert "the model's guess" in out[NOTE]  # back to the guess, kept until it is saved


def test_hostile_fills_get_sentences_and_write_nothing(server, tmp_path):
    url, sets = server
    c, token, (photo_id,) = start(url, EXAMPLES[:1])
    folder = sets / hash_owner(token)
    before = files_of(folder)
    good = editor(tmp_path, EXAMPLES[0], strokes_inside(truth_of(EXAMPLES[0])))
    cases = [
        ((editor(tmp_path, EXAMPLES[0]),), "/label_fill", "paint a stroke"),
        ((good | {"background": handle_file(str(EXAMPLES[1]))},), "/label_fill", "still loading"),
        ((good, "500, 500, 900, 900", "object"), "/label_box", "inside the photo"),
        ((good, "-90, -90, -10, -10", "object"), "/label_box", "inside the photo"),
        ((good, "10, 10", "object"), "/label_box", "second corner"),
        ((good, "nan, 0, 10, 10", "object"), "/label_box", "four numbers"),
        ((good, "1e999, 0, 10, 10", "object"), "/label_box", "four numbers"),
        ((good, "1, " * 5000 + "1", "object"), "/label_box", "four numbers"),
        ((good, "10, 10, 90, 90", "background"), "/label_box", "other than"),
        ((good, "10, 10, 90, 90", 9), "/label_box", "not one of this set's 2 classes"),
        ((good, "10, 10, 90, 90", "<b>x</b>" * 100), "/label_box", "not one of this set's"),
    ]
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((128, 128, 4), 128, np.uint8), "RGBA").save(gray)
    odd = {"background": handle_file(str(EXAMPLES[0])), "layers": [handle_file(str(gray))], "composite": None}
    cases.append(((odd,), "/label_fill", "colours that belong to no class"))
    huge = png_claiming(tmp_path / "huge.png", 20000, 20000)
    big = {"background": handle_file(str(EXAMPLES[0])), "layers": [handle_file(str(huge))], "composite": None}
    cases.append(((big,), "/label_fill", "more than the limit of 16,384 pixels"))
    wrong = tmp_path / "wrong.png"
    Image.fromarray(np.zeros((64, 96, 4), np.uint8), "RGBA").save(wrong)
    small = {"background": handle_file(str(EXAMPLES[0])), "layers": [handle_file(str(wrong))], "composite": None}
    cases.append(((small,), "/label_fill", "layer is 96x64 pixels"))
    cases.append((("not an editor",), "/label_fill", ""))
    for args, api, words in cases:
        with pytest.raises(AppError, match=f"(?i){words}") as err:
            c.predict(token, *args, api_name=api)
        assert "Traceback" not in str(err.value) and "<b>" not in str(err.value), (api, args[1:])
    assert files_of(folder) == before  # nothing written, in the set's folder or anywhere in it
    with pytest.raises(AppError, match="between 2 and 5 classes"):  # too many classes never reach a fill
        c.predict(token, ", ".join(f"c{i}" for i in range(40)), None, api_name="/label_classes")
    other, other_token = session(url)  # another browser: no photo in its editor, so nothing to fill
    with pytest.raises(AppError, match="Add a photo and paint on it first"):
        other.predict(other_token, good, api_name="/label_fill")
    with pytest.raises(AppError, match="Add a photo and paint on it first"):
        other.predict(other_token, good, "10, 10, 90, 90", "object", api_name="/label_box")
    assert files_of(folder) == before
    assert sorted(p.name for p in sets.iterdir() if p.is_dir()).count(hash_owner(other_token)) == 0
