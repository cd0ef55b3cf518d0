"""The Label tab over HTTP, driven by gradio_client: label photos, train on them, download them; another
browser cannot touch them; hostile input gets a sentence. A real server, real files, painted layers as PNGs.
"""

from __future__ import annotations

import json
import os
import urllib.request
import zipfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image  # noqa: E402

from segdemo.core.config import DataConfig  # noqa: E402
from segdemo.data import open_dataset  # noqa: E402
from segdemo.data.base import IGNORE  # noqa: E402
from segdemo.server.labelset import LABEL_COLORS, layer_from_mask  # noqa: E402
from tests.conftest import api_session as session
from tests.conftest import in_process_app, tiny_train_args  # noqa: E402
from tests.payloads import png_claiming  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("shapes_*.png"))
CLASSES = "bg, circle, square, triangle"
XSS = '<img src=x onerror="window.__xss=1">'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with in_process_app(tmp_path_factory.mktemp("label-app")) as (url, jobs, demo):
        yield url, demo


def info(c: Client, token: str) -> dict:
    return c.predict(token, api_name="/label_info")


def painted(tmp: Path, photo: Path, k: int = 4) -> dict:
    """The editor's value as a browser sends it after painting the photo's true classes (ids >= k unpainted)."""
    truth = np.array(Image.open(ROOT / "examples" / "masks" / photo.name))
    truth[truth >= k] = IGNORE
    layer = tmp / f"{photo.stem}-layer.png"
    Image.fromarray(layer_from_mask(truth.astype(np.uint8), LABEL_COLORS[:k]), "RGBA").save(layer)
    return {"background": handle_file(str(photo)), "layers": [handle_file(str(layer))], "composite": None}


def label_two(c: Client, token: str, tmp: Path) -> dict:
    """Add two photos, name four classes, paint both (Save and next), as the page does."""
    c.predict(token, [handle_file(str(p)) for p in EXAMPLES[:2]], api_name="/label_add")
    c.predict(token, CLASSES, None, api_name="/label_classes")
    for photo in EXAMPLES[:2]:
        c.predict(token, painted(tmp, photo), api_name="/label_next")  # saves the photo in the editor, opens the next
    return info(c, token)


@pytest.fixture(scope="module")
def labelled(server, tmp_path_factory):
    url, _ = server
    c, token = session(url)
    return c, token, label_two(c, token, tmp_path_factory.mktemp("paint"))


def test_label_two_photos_then_download_the_dataset(labelled, tmp_path):
    c, token, state = labelled
    assert state["classes"] == ["bg", "circle", "square", "triangle"] and state["progress"] == "2 of 2 labelled"
    assert [p["name"] for p in state["photos"]] == ["shapes_1.png", "shapes_2.png"]
    assert all(p["labelled"] for p in state["photos"])
    out = c.predict(token, None, api_name="/label_download")
    zip_path = out[-1]["value"]
    assert zip_path.endswith("labelled-photos.zip")
    assert "2 of 2 labelled" in out[2]
    splits = open_dataset(DataConfig(source=zip_path), tmp_path / "run")
    assert splits.classes.names == ("bg", "circle", "square", "triangle")
    for source in (splits.train, splits.val):
        for i in range(len(source)):
            _, mask = source.load(i)
            truth = np.array(Image.open(ROOT / "examples" / "masks" / f"{source.name(i)}.png"))
            np.testing.assert_array_equal(mask, truth)  # what was painted is what the dataset holds


def test_train_on_these_opens_the_train_tab_with_the_dataset_and_trains(labelled, server):
    url, _ = server
    c, token, _ = labelled
    out = c.predict(token, None, api_name="/label_train")
    dataset, zip_path, preset = out[-3:]
    assert dataset == "zip" and zip_path.endswith("labelled-photos.zip")
    assert preset == "instant"  # a first prediction within seconds: the frozen ImageNet encoder
    report, classes_html, _ = c.predict("zip", handle_file(zip_path), 768, api_name="/check_data")
    assert "Ready to train" in report and "2 pairs" in report, report
    assert "triangle" in classes_html
    from segdemo.ui.settings import SETTINGS

    planned = c.predict("minute", "zip", handle_file(zip_path), 768, api_name="/plan")  # what the page does next
    plan = dict(zip([*(s.name for s in SETTINGS), "why"], planned, strict=True))
    assert plan["time_budget"] == 1 and f"{plan['image_size']} px" in plan["why"]
    assert plan["image_size"] <= 128  # the photos' own size (128 px shapes): never blown up
    assert plan["encoder"] == "efficientnet_lite0" and "ImageNet encoder" in plan["why"]  # photos, not shapes
    instant = c.predict(preset, "zip", handle_file(zip_path), 768, api_name="/plan")
    instant = dict(zip([*(s.name for s in SETTINGS), "why"], instant, strict=True))
    assert instant["encoder"] == "efficientnet_lite0" and not instant["augment"] and "Instant" in instant["why"]
    args = tiny_train_args(dataset="zip", zip_file=handle_file(zip_path), epochs=2, batch_size=4)
    run_id, _ = c.predict(token, **args, api_name="/train")
    for _ in c.submit(token, run_id, api_name="/watch"):
        pass
    run = c.predict(token, run_id, api_name="/run_info")
    assert run["status"] == "done" and run["classes"] == ["bg", "circle", "square", "triangle"]
    assert len(run["epochs"]) == 2 and run["has_checkpoint"]


def test_reopening_a_photo_gives_back_its_paint_on_a_canvas_of_its_size(server, tmp_path):
    url, _ = server
    c, token = session(url)
    wide = tmp_path / "wide.png"
    Image.fromarray(np.full((100, 200, 3), 90, np.uint8)).save(wide)
    c.predict(token, [handle_file(str(EXAMPLES[0])), handle_file(str(wide))], api_name="/label_add")
    c.predict(token, painted(tmp_path, EXAMPLES[0], k=2), api_name="/label_save")
    square, other = info(c, token)["photos"]
    editor = c.predict(token, None, other["id"], api_name="/label_open")[1]
    assert editor["canvas_size"] == [200, 100]  # the canvas takes each photo's size, or its layer lands off it
    editor = c.predict(token, None, square["id"], api_name="/label_open")[1]
    assert editor["canvas_size"] == [128, 128] and "brush" not in editor  # the palette follows the classes only
    layer = np.array(Image.open(editor["value"]["layers"][0]))
    assert layer.shape == (128, 128, 4)
    assert (layer[..., 3] > 0).sum() == sum(square["class_pixels"]) > 0  # every labelled pixel painted, no more


def test_paint_sent_with_another_photo_is_never_saved_onto_this_one(server, tmp_path):
    """While the editor loads the next photo it still holds the last one: a Save then says to wait, and the
    automatic save of "Train on these" skips it; no mask changes."""
    url, _ = server
    c, token = session(url)
    before = label_two(c, token, tmp_path)  # the page now shows the first photo again
    stale = painted(tmp_path, EXAMPLES[1], k=2)  # the second photo with paint: what a loading editor sends
    with pytest.raises(AppError, match="still loading this photo"):
        c.predict(token, stale, api_name="/label_save")
    with pytest.raises(AppError, match="still loading this photo"):
        c.predict(token, stale, api_name="/label_next")
    c.predict(token, stale, api_name="/label_train")
    assert info(c, token) == before


def test_another_browser_cannot_read_change_or_download_a_set(labelled, server, tmp_path):
    url, _ = server
    c, token, state = labelled
    other, other_token = session(url)
    assert info(other, other_token)["total"] == 0  # its own, empty set
    photo_id = state["photos"][0]["id"]
    with pytest.raises(AppError, match="No such photo in your labelled set"):
        other.predict(other_token, None, photo_id, api_name="/label_open")
    with pytest.raises(AppError, match="No such photo in your labelled set"):
        other.predict(other_token, painted(tmp_path, EXAMPLES[0]), photo_id, api_name="/label_open")
    with pytest.raises(AppError, match="Add a photo and paint on it first"):
        other.predict(other_token, painted(tmp_path, EXAMPLES[0]), api_name="/label_save")
    with pytest.raises(AppError, match="Choose the photo to remove first"):
        other.predict(other_token, api_name="/label_remove")
    with pytest.raises(AppError, match="No photo is labelled yet"):
        other.predict(other_token, None, api_name="/label_download")
    with pytest.raises(AppError, match="Label at least 2 photos first"):
        other.predict(other_token, None, api_name="/label_train")
    for bad in ("made-up", None, token + "x"):  # a token the server did not sign is no session at all
        with pytest.raises(AppError, match="not recognised"):
            other.predict(bad, api_name="/label_info")
    after = info(c, token)
    assert after == state  # the owner's set is exactly as it was


# -- hostile input ---------------------------------------------------------------------------------------------


@pytest.fixture
def fresh(server):
    url, _ = server
    c, token = session(url)
    c.predict(token, [handle_file(str(EXAMPLES[0]))], api_name="/label_add")
    return c, token


def test_bad_photos_get_sentences(fresh, tmp_path):
    c, token = fresh
    bomb = png_claiming(tmp_path / "bomb.png", 30000, 30000)
    with pytest.raises(AppError, match=r"bomb.png claims 900,000,000 pixels, more than the limit"):
        c.predict(token, [handle_file(str(bomb))], api_name="/label_add")
    page = tmp_path / "page.png"
    page.write_text("<html><script>alert(1)</script></html>")
    with pytest.raises(AppError, match="not a supported image"):
        c.predict(token, [handle_file(str(page))], api_name="/label_add")
    with pytest.raises(AppError, match="Take a photo with the webcam first"):
        c.predict(token, None, api_name="/label_webcam")
    assert info(c, token)["total"] == 1


def test_bad_layers_get_sentences_and_change_nothing(fresh, tmp_path):
    c, token = fresh
    wrong = tmp_path / "wrong.png"
    Image.fromarray(np.zeros((64, 96, 4), np.uint8), "RGBA").save(wrong)
    with pytest.raises(AppError, match="layer is 96x64 pixels but the photo is 128x128"):
        c.predict(
            token,
            {"background": None, "layers": [handle_file(str(wrong))], "composite": None}
            | {"background": handle_file(str(EXAMPLES[0]))},
            api_name="/label_save",
        )
    huge = png_claiming(tmp_path / "huge.png", 20000, 20000)
    with pytest.raises(AppError, match="more than the limit of 16,384 pixels"):
        c.predict(
            token,
            {"background": handle_file(str(EXAMPLES[0])), "layers": [handle_file(str(huge))], "composite": None},
            api_name="/label_save",
        )
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((128, 128, 4), 128, np.uint8), "RGBA").save(gray)
    with pytest.raises(AppError, match="colours that belong to no class"):
        c.predict(
            token,
            {"background": handle_file(str(EXAMPLES[0])), "layers": [handle_file(str(gray))], "composite": None},
            api_name="/label_save",
        )
    with pytest.raises(AppError) as err:  # refused by Gradio's own check of the editor's value
        c.predict(token, "not an editor", api_name="/label_save")
    assert "Traceback" not in str(err.value)
    assert info(c, token)["labelled"] == 0


def test_a_layer_path_outside_the_uploads_is_refused(fresh, server):
    """A crafted payload naming a server file is refused by Gradio before the handler reads anything."""
    url, _ = server
    c, token = fresh
    payload = {
        "data": [
            token,
            {
                "background": None,
                "layers": [{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}],
                "composite": None,
            },
        ],
    }
    req = urllib.request.Request(
        f"{url}gradio_api/call/label_save", json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    event_id = json.loads(urllib.request.urlopen(req, timeout=30).read())["event_id"]
    stream = urllib.request.urlopen(f"{url}gradio_api/call/label_save/{event_id}", timeout=60).read().decode()
    assert "event: error" in stream and "root:" not in stream
    assert info(c, token)["labelled"] == 0


def test_class_names_are_checked_and_escaped(fresh):
    c, token = fresh
    with pytest.raises(AppError, match="between 2 and 5 classes"):
        c.predict(token, "a, b, c, d, e, f", None, api_name="/label_classes")
    with pytest.raises(AppError, match="Two classes are called"):
        c.predict(token, "cat, CAT", None, api_name="/label_classes")
    out = c.predict(token, "back" + XSS + ", " + "fore" + XSS, None, api_name="/label_classes")
    progress, legend, names = out[2], out[4], out[5]
    assert [c for c, _ in out[1]["brush"]["colors"]] == ["#0082c8", "#e6194b"]  # one brush colour per class
    assert "<img" not in legend and "&lt;img" in legend
    assert "<img" not in progress
    assert names == "back" + XSS + ", fore" + XSS  # the text box shows the names as typed
    assert info(c, token)["classes"] == ["back" + XSS, "fore" + XSS]


def test_the_editor_keeps_no_blobs(server):
    """gr.ImageEditor's accept_blobs would keep whatever any visitor sends in memory; here it keeps nothing."""
    url, demo = server
    editor = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "label-editor")
    boundary = "segdemoblob"
    fields = {
        "component_id": str(editor._id),
        "session_hash": "x" * 11,
        "fn_name": "accept_blobs",
        "id": "blob1",
        "type": "layer",
        "index": "99999999",
    }
    body = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in fields.items()
        )
        + (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="l.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + b"\0" * 1000
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(
        f"{url}gradio_api/component_server", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200
    assert editor.blob_storage == {}


def test_the_zip_holds_only_the_dataset(labelled):
    c, token, _ = labelled
    zip_path = c.predict(token, None, api_name="/label_download")[-1]["value"]
    names = sorted(zipfile.ZipFile(zip_path).namelist())
    assert names == [
        "segdemo-labels/README.txt",
        "segdemo-labels/classes.json",
        "segdemo-labels/images/shapes_1.jpg",
        "segdemo-labels/images/shapes_2.jpg",
        "segdemo-labels/masks/shapes_1.png",
        "segdemo-labels/masks/shapes_2.png",
    ]
