"""The app over HTTP, driven by gradio_client: train, stream, predict, isolation and user errors.

A real server on a free port (demo.launch(prevent_thread_lock=True)), real files, tiny runs.
"""

from __future__ import annotations

import logging
import os
import re
import time
import zipfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image  # noqa: E402

from segdemo.core.checkpoint import load_checkpoint  # noqa: E402
from segdemo.core.metrics import metrics_from_confusion, most_confused  # noqa: E402
from segdemo.core.predict import Predictor  # noqa: E402
from segdemo.core.viz import overlay  # noqa: E402
from segdemo.imageio import load_image  # noqa: E402
from tests.conftest import api_session as session
from tests.conftest import in_process_app, tiny_train_args

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "shapes_3.png"
EXAMPLE_MASK = ROOT / "examples" / "masks" / "shapes_3.png"


def nearest(picture, **candidates) -> str:
    """Which candidate a (JPEG-compressed) picture is: the one with the smallest mean absolute difference."""
    diff = {k: np.abs(np.asarray(picture, int) - np.asarray(v, int)).mean() for k, v in candidates.items()}
    return min(diff, key=diff.get)


def want_classes(checkpoint):
    return load_checkpoint(checkpoint).classes


def tiny(**over) -> dict:
    """/train arguments for a run of a few seconds: 32 built-in images at 32 px, width 4, 2 epochs."""
    return tiny_train_args(**over)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with in_process_app(tmp_path_factory.mktemp("app")) as (url, jobs, demo):
        yield url, jobs


def train(c: Client, token: str, **over) -> str:
    run_id, status = c.predict(token, **tiny(**over), api_name="/train")
    assert run_id and isinstance(status, str)
    return run_id


def watch(c: Client, token: str, run_id: str) -> tuple[list[str], list]:
    """Every streamed status line, and each output's last value (the stream skips an output that has not
    changed since it was last sent, e.g. the filmstrip when the final update carries only the finish line)."""
    job = c.submit(token, run_id, api_name="/watch")
    statuses = [out[0] for out in job]
    last: list = []
    for out in job.outputs():
        last = [old if _skipped(new) else new for old, new in zip(last or out, out, strict=True)]
    return statuses, last


def _skipped(value) -> bool:
    """An update that carries no value keeps the old one: gr.skip() arrives as {"__type__": "update"}, and for a
    gr.HTML output (the confusion matrix) gradio adds {"props": {"__type__": "update"}} to it."""
    return isinstance(value, dict) and value.get("__type__") == "update" and "value" not in value


@pytest.fixture(scope="module")
def finished_run(server):
    url, _ = server
    c, token = session(url)
    run_id = train(c, token)
    statuses, last = watch(c, token, run_id)
    return c, token, run_id, statuses, last


def test_tiny_run_streams_its_epochs_in_order(finished_run, server):
    c, token, run_id, statuses, last = finished_run
    info = c.predict(token, run_id, api_name="/run_info")
    assert info["status"] == "done" and info["finished"] and info["has_checkpoint"]
    assert info["events"] == ["Started", "EpochEnd", "EpochEnd", "Done"]
    assert [e["epoch"] for e in info["epochs"]] == [1, 2]
    assert info["classes"] == ["background", "circle", "square", "triangle"]
    # the stream's status lines never go back an epoch, and it ends with the finish line. (It folds the
    # events of each 0.25 s tick into one update, so an epoch this tiny may never get a line of its own.)
    epochs_seen = [int(n) for s in statuses for n in re.findall(r"Epoch (\d+)/2", s)]
    assert epochs_seen and epochs_seen == sorted(epochs_seen), statuses
    assert "Finished" in statuses[-1] and "kept epoch" in statuses[-1]
    status, plot, table, filmstrip, checkpoint, confusion, worst, model_choice = last
    assert "epoch 2" in " ".join(table["headers"])  # the last table is the last epoch's
    assert table["data"][-1][0] == "mean (mIoU)" and len(table["data"]) == 5
    # the curves travel as data (a gr.LinePlot drawn by the browser): three curves, a point per epoch each
    points = [dict(zip(plot["value"]["columns"], row, strict=True)) for row in plot["value"]["data"]]
    assert {(p["curve"], p["epoch"]) for p in points} == {
        (c, e) for c in ("train loss", "val loss", "val mIoU") for e in (1, 2)
    }
    mious = [p["value"] for p in points if p["curve"] == "val mIoU"]
    assert mious == pytest.approx([e["miou"] for e in info["epochs"]], abs=1e-9)  # JSON keeps 10 digits
    assert float(table["data"][-1][1]) == pytest.approx(info["epochs"][-1]["miou"], abs=6e-4)
    assert len(filmstrip) == 3 * 8  # image, truth, prediction for each of the 8 validation images
    # where it fails, after the last epoch: the confusion of the validation split, and its 4 worst images
    where = info["where_it_fails"]
    assert where["epoch"] == 2 and where["confusion"]["classes"] == info["classes"]
    counts = np.array(where["confusion"]["counts"])
    assert metrics_from_confusion(counts).miou == pytest.approx(info["epochs"][-1]["miou"])
    assert "Confusion on the validation images after epoch 2" in confusion and "Most confused" in confusion
    for pair in where["confusion"]["most_confused"]:
        assert pair["sentence"] in confusion
    scores = [w["miou"] for w in where["worst_images"]]
    assert len(scores) == 4 and scores == sorted(scores)
    assert [w["caption"] for w in worst] == [f"{w['name']}: mIoU {w['miou']:.2f}" for w in where["worst_images"]]
    side_by_side = Image.open(worst[0]["image"])
    assert side_by_side.width > 2 * side_by_side.height - 10  # each image beside its error map
    assert load_checkpoint(checkpoint).classes.num_classes == 4  # the download is a real checkpoint
    assert model_choice["value"] == f"run:{run_id}"  # selected in the Predict tab, and listed there
    assert f"run:{run_id}" in [v for _, v in model_choice["choices"]]


def test_prediction_table_equals_the_engines_metrics(finished_run, server):
    c, token, run_id, _, _ = finished_run
    _, jobs = server
    out = c.predict(
        token,
        f"run:{run_id}",
        None,
        [handle_file(str(EXAMPLE))],
        [handle_file(str(EXAMPLE_MASK))],
        None,
        0.5,
        True,
        api_name="/predict",
    )
    slider, color, legend, table, summary, errors, confusion, prob_maps, mask_png, details, shown, view = out
    ckpt = jobs.get(token, run_id).best_checkpoint
    want = Predictor.from_path(ckpt).predict(load_image(EXAMPLE), target=np.array(Image.open(EXAMPLE_MASK)))
    m = want.metrics
    assert details["ground_truth"] and details["miou"] == pytest.approx(m.miou)
    assert details["pixel_accuracy"] == pytest.approx(m.pixel_accuracy)
    for row, iou, dice, share in zip(details["per_class"], m.iou, m.dice, m.pixel_share, strict=True):
        assert row["iou"] == pytest.approx(None if np.isnan(iou) else iou)
        assert row["dice"] == pytest.approx(None if np.isnan(dice) else dice)
        assert row["true_share"] == pytest.approx(share)
    for row, iou in zip(table["data"][:4], m.iou, strict=True):  # what the page shows, rounded
        assert row[1] == ("n/a" if np.isnan(iou) else f"{iou:.4f}")
    assert table["data"][-1][:2] == ["mean (mIoU)", f"{m.miou:.4f}"]
    assert np.array_equal(np.asarray(Image.open(mask_png)), want.mask)  # the PNG holds class ids
    truth_side, pred_side = (np.asarray(Image.open(f)).astype(int) for f in slider)  # JPEGs
    assert truth_side.shape == pred_side.shape == (128, 128, 3)
    image = load_image(EXAMPLE)
    classes, truth = want_classes(ckpt), np.array(Image.open(EXAMPLE_MASK))
    sides = dict(
        pred=overlay(image, want.mask, classes, 0.5),
        truth=overlay(image, truth, classes, 0.5),
        image=image,
        pred_opaque=overlay(image, want.mask, classes, 1.0),
    )
    assert nearest(pred_side, **sides) == "pred" and nearest(truth_side, **sides) == "truth"
    assert np.array_equal(np.asarray(Image.open(color))[..., :3], want.color)
    assert errors is not None and len(prob_maps) == 4 and "circle" in legend
    for pair in most_confused(want.confusion):  # this image's confusion, in words
        assert pair.sentence(want_classes(ckpt).names) in confusion
    assert shown["value"] == [0, 1, 2, 3] and view  # every class coloured; the view /redraw redraws


def test_prediction_without_ground_truth_shows_the_checkpoints_own_scores(finished_run, server):
    c, token, run_id, _, _ = finished_run
    _, jobs = server
    out = c.predict(
        token, f"run:{run_id}", None, [handle_file(str(EXAMPLE))], None, None, 0.5, False, api_name="/predict"
    )
    slider, table, errors, confusion, prob_maps, details = out[0], out[3], out[5], out[6], out[7], out[9]
    assert table["headers"][2] == "val IoU (from the checkpoint's validation set)"
    assert errors is None and not prob_maps and confusion == ""
    image, mask = load_image(EXAMPLE), np.asarray(Image.open(out[8]))
    classes = want_classes(jobs.get(token, run_id).best_checkpoint)
    sides = dict(image=image, prediction=overlay(image, mask, classes, 0.5))
    # the image itself beside the prediction
    assert [nearest(Image.open(f), **sides) for f in slider] == ["image", "prediction"]
    assert not details["ground_truth"] and details["checkpoint_val_miou"] is not None
    assert sum(r["predicted_share"] for r in details["per_class"]) == pytest.approx(1.0)


class ModelRuns(logging.Handler):
    """Counts the server's "the model ran" log records (one per prediction, segdemo/ui/predict_tab.py)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record):
        self.count += "the model ran" in record.getMessage()


def predict_example(c: Client, token: str, run_id: str, with_mask: bool = True):
    masks = [handle_file(str(EXAMPLE_MASK))] if with_mask else None
    return c.predict(
        token, f"run:{run_id}", None, [handle_file(str(EXAMPLE))], masks, None, 0.5, False, api_name="/predict"
    )


def test_redraw_changes_opacity_and_classes_without_the_model(finished_run, server):
    c, token, run_id, _, _ = finished_run
    _, jobs = server
    classes = want_classes(jobs.get(token, run_id).best_checkpoint)
    image, truth = load_image(EXAMPLE), np.array(Image.open(EXAMPLE_MASK))
    runs, ui_log = ModelRuns(), logging.getLogger("segdemo.ui")
    ui_log.addHandler(runs)
    try:
        out = predict_example(c, token, run_id)
        assert runs.count == 1  # the counter sees a prediction
        mask, view = np.asarray(Image.open(out[8])), out[-1]

        def redraw(alpha, shown, **candidates) -> list[str]:
            pictures = c.predict(token, view, alpha, shown, api_name="/redraw")
            return [nearest(Image.open(f), **candidates) for f in pictures]

        both = {  # each side at either opacity
            f"{what} {alpha}": overlay(image, m, classes, alpha)
            for what, m in (("truth", truth), ("pred", mask))
            for alpha in (0.5, 0.9)
        }
        assert redraw(0.9, [0, 1, 2, 3], image=image, **both) == ["truth 0.9", "pred 0.9"]
        assert redraw(0.9, [], image=image, **both) == ["image", "image"]  # no class coloured
        # background (85% of the true mask) left uncoloured: the truth side shows the shapes only (the other
        # side depends on what this tiny model predicts)
        shapes = {"truth 0.5 shapes only": overlay(image, truth, classes, 0.5, hidden=[0])}
        assert redraw(0.5, [1, 2, 3], image=image, **both, **shapes)[0] == "truth 0.5 shapes only"
        assert runs.count == 1  # and the model never ran again
    finally:
        ui_log.removeHandler(runs)
    # wrong values get a sentence
    with pytest.raises(AppError, match="not in the list of choices"):  # Gradio checks the choices itself
        c.predict(token, view, 0.5, [7], api_name="/redraw")


def test_only_the_browser_that_predicted_may_redraw(finished_run, server):
    url, _ = server
    a, token_a, run_id, _, _ = finished_run
    view = predict_example(a, token_a, run_id)[-1]
    b, token_b = session(url)
    gone = "no longer kept on the server"
    for token, view_id in ((token_b, view), (token_a, "made-up-view-id"), (token_b, "made-up-view-id")):
        with pytest.raises(AppError, match=gone):  # another's view reads as a made-up one
            b.predict(token, view_id, 0.3, [], api_name="/redraw")
    with pytest.raises(AppError, match="not recognised"):
        b.predict("guessed-token", view, 0.3, [], api_name="/redraw")
    assert len(a.predict(token_a, view, 0.3, [0, 1, 2, 3], api_name="/redraw")) == 2  # its owner still can
    with pytest.raises(AppError, match="not recognised"):  # no token, no redraw
        b.predict(None, view, 0.3, [], api_name="/redraw")


def test_two_sessions_each_see_only_their_own_run(finished_run, server):
    url, _ = server
    a, token_a, run_a, _, _ = finished_run
    b, token_b = session(url)
    assert token_b != token_a
    run_b = train(b, token_b)
    # B cannot read, stop or predict with A's run: same words as a made-up id
    for call in (
        lambda: b.predict(token_b, run_a, api_name="/run_info"),
        lambda: b.predict(
            token_b,
            f"run:{run_a}",
            None,
            [handle_file(str(EXAMPLE))],
            None,
            None,
            0.5,
            False,
            api_name="/predict",
        ),
    ):
        with pytest.raises(AppError, match="No such run"):
            call()
    with pytest.raises(AppError, match="No such run"):
        b.predict(token_b, "made-up-run-id", api_name="/run_info")
    b.predict(token_b, run_a, api_name="/stop")  # "stop A's run" only stops B's own active run
    assert a.predict(token_a, run_a, api_name="/run_info")["status"] == "done"
    assert b.predict(token_b, "", api_name="/run_info")["run_id"] == run_b
    assert a.predict(token_a, "", api_name="/run_info")["run_id"] == run_a
    # a token the server did not issue is refused outright
    with pytest.raises(AppError, match="not recognised"):
        b.predict("guessed-token", run_a, api_name="/run_info")
    statuses, last = watch(b, token_b, run_b)
    assert "Stopped" in statuses[-1] or "Finished" in statuses[-1]


def test_train_pressed_twice_is_refused_and_stop_needs_a_run(server):
    url, _ = server
    c, token = session(url)
    with pytest.raises(AppError, match="Nothing is running to stop"):
        c.predict(token, "", api_name="/stop")
    run_id = train(c, token, epochs=20)
    with pytest.raises(AppError, match="already have a run in progress"):
        train(c, token)
    assert "Stopping" in c.predict(token, run_id, api_name="/stop")
    statuses, _ = watch(c, token, run_id)
    assert "Stopped" in statuses[-1]
    with pytest.raises(AppError, match="Nothing is running to stop"):
        c.predict(token, run_id, api_name="/stop")


def test_user_mistakes_get_a_sentence(server, tmp_path):
    url, _ = server
    c, token = session(url)
    fake_png = tmp_path / "notes.png"
    fake_png.write_text("this is not an image")
    bad_ckpt = tmp_path / "model.safetensors"
    bad_ckpt.write_bytes(b"\x80\x04garbage pickle")
    foreign = tmp_path / "someone_elses.safetensors"  # a real safetensors file, but not a segdemo checkpoint
    from safetensors.numpy import save_file

    save_file({"w": np.zeros((2, 2), np.float32)}, str(foreign))
    cases = [
        (dict(images=None), "Upload an image first"),
        (dict(model="default"), "shipped model is not installed"),
        (dict(model="upload", checkpoint_file=handle_file(str(bad_ckpt))), "pickle"),
        (dict(model="upload", checkpoint_file=handle_file(str(foreign))), "not a segdemo checkpoint"),
        (dict(model="upload", checkpoint_file=None), "Upload a .safetensors"),
        (dict(images=[handle_file(str(fake_png))]), "notes.png is not a supported image"),  # checked first
    ]
    for over, words in cases:
        args = dict(
            token=token,
            model="default",
            checkpoint_file=None,
            images=[handle_file(str(EXAMPLE))],
            masks=None,
            show=None,
            alpha=0.5,
            probability_maps=False,
        )
        args.update(over)
        with pytest.raises(AppError, match=words):
            c.predict(*args.values(), api_name="/predict")


def test_corrupt_image_and_mismatched_mask(finished_run, tmp_path):
    c, token, run_id, _, _ = finished_run
    fake_png = tmp_path / "notes.png"
    fake_png.write_text("this is not an image")
    with pytest.raises(AppError, match="not a supported image"):
        c.predict(
            token,
            f"run:{run_id}",
            None,
            [handle_file(str(fake_png))],
            None,
            None,
            0.5,
            False,
            api_name="/predict",
        )
    small = tmp_path / "shapes_3.png"
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(small)
    with pytest.raises(AppError, match="masks must match their image's size"):
        c.predict(
            token,
            f"run:{run_id}",
            None,
            [handle_file(str(EXAMPLE))],
            [handle_file(str(small))],
            None,
            0.5,
            False,
            api_name="/predict",
        )


def test_data_check_explains_a_zip_without_masks(server, tmp_path):
    url, _ = server
    c, _ = session(url)
    z = tmp_path / "nomasks.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.write(EXAMPLE, "images/a.png")
        f.write(EXAMPLE, "images/b.png")
    report, classes, samples = c.predict("zip", handle_file(str(z)), 768, api_name="/check_data")
    assert "cannot be used yet" in report and not samples
    assert "nomasks.zip is not a dataset folder" in report and "segdemo-app" not in report  # no server paths
    report, classes, samples = c.predict("builtin", None, 768, api_name="/check_data")
    assert "Ready to train" in report and "triangle" in classes and len(samples) == 6
    c2, token = session(url)
    t = time.time()
    with pytest.raises(AppError, match="cannot be used yet"):
        c2.predict(token, **tiny(dataset="zip", zip_file=handle_file(str(z))), api_name="/train")
    assert time.time() - t < 30


def test_presets_are_planned_for_the_chosen_data(server, tmp_path):
    """The Train tab's preset adapts: the built-in 128 px shapes and a zip of large photos get different
    scales, each with a line saying why; a preset the server does not know is refused."""
    url, _ = server
    c, _ = session(url)
    rng = np.random.default_rng(0)
    z = tmp_path / "photos.zip"
    with zipfile.ZipFile(z, "w") as f:
        for i in range(12):
            photo, mask = tmp_path / f"p{i}.png", tmp_path / f"m{i}.png"
            Image.fromarray(rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)).save(photo)
            Image.fromarray((rng.random((600, 800)) > 0.5).astype(np.uint8)).save(mask)
            f.write(photo, f"images/p{i}.png")
            f.write(mask, f"masks/p{i}.png")
    from segdemo.ui.settings import SETTINGS

    names = [s.name for s in SETTINGS]  # /plan's outputs: every setting, in SETTINGS order
    shapes = dict(zip([*names, "why"], c.predict("10min", "builtin", None, 768, api_name="/plan"), strict=True))
    photos = dict(zip([*names, "why"], c.predict("10min", "zip", handle_file(str(z)), 768, api_name="/plan"),
                      strict=True))  # fmt: skip
    assert shapes["image_size"] <= 128 and "10 minutes" in shapes["why"] and "img/s measured here" in shapes["why"]
    assert shapes["time_budget"] == 10 and photos["time_budget"] == 10
    assert f"{photos['image_size']} px" in photos["why"] and f"up to {photos['epochs']} epochs" in photos["why"]
    assert photos["image_size"] > shapes["image_size"]  # 12 big photos afford a larger scale than 768 small ones
    with pytest.raises(AppError):
        c.predict("an hour", "builtin", None, 768, api_name="/plan")


def test_a_picture_sent_again_is_never_rewritten_under_a_reader(tmp_path):
    """Gradio names output pictures by a hash of their bytes; sending one again must never truncate the
    copy a browser is reading (segdemo.ui.picture_cache.write_pictures_to_cache_atomically). Gradio's own
    write gave this reader hundreds of short reads in 100 saves."""
    import threading

    from gradio import processing_utils as pu
    from PIL import Image

    from segdemo.ui.picture_cache import write_pictures_to_cache_atomically

    write_pictures_to_cache_atomically()
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    path = Path(pu.save_pil_to_cache(picture, str(tmp_path), format="png"))
    whole = path.read_bytes()
    short, done = [], threading.Event()

    def browser():  # fetches the picture over and over while the app sends it again
        while not done.is_set():
            if path.read_bytes() != whole:
                short.append(1)

    t = threading.Thread(target=browser)
    t.start()
    try:
        for _ in range(60):
            assert Path(pu.save_pil_to_cache(picture, str(tmp_path), format="png")) == path
    finally:
        done.set()
        t.join()
    assert not short
    path.write_bytes(whole[:20])  # a copy cut short (say, by a killed process) is replaced whole
    assert Path(pu.save_pil_to_cache(picture, str(tmp_path), format="png")).read_bytes() == whole
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left beside it
