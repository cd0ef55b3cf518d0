"""The app over HTTP, driven by gradio_client: train, stream, predict, isolation and user errors.

A real server on a free port (demo.launch(prevent_thread_lock=True)), real files, tiny runs.
"""

from __future__ import annotations

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

from segdemo.checkpoint import load_checkpoint  # noqa: E402
from segdemo.imageio import load_image  # noqa: E402
from segdemo.jobs import JobManager  # noqa: E402
from segdemo.predict import Predictor  # noqa: E402
from tests.conftest import free_port, tiny_train_args

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "shapes_3.png"
EXAMPLE_MASK = ROOT / "examples" / "masks" / "shapes_3.png"


def tiny(**over) -> dict:
    """/train arguments for a run of a few seconds: 32 built-in images at 32 px, width 4, 2 epochs."""
    return tiny_train_args(**over)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from segdemo.ui import build_demo, launch

    tmp = tmp_path_factory.mktemp("app")
    jobs = JobManager(tmp / "runs", max_concurrent=1, reaper=False)
    demo = build_demo(jobs, cache_dir=tmp / "cache", default_checkpoint=tmp / "no-shipped-model.safetensors")
    port = free_port()
    launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", jobs
    demo.close()
    jobs.close()


def session(url: str) -> tuple[Client, str]:
    c = Client(url, verbose=False, ssl_verify=False)  # plain http: no certificate store per request
    return c, c.predict(None, api_name="/session")


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
    return isinstance(value, dict) and set(value) == {"__type__"}


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
    assert "Finished" in statuses[-1] and "best val mIoU" in statuses[-1]
    status, plot, table, filmstrip, checkpoint, model_choice = last
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
    image, color, overlay, legend, table, summary, errors, prob_maps, mask_png, details = out
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
    assert np.asarray(Image.open(color)).shape[:2] == np.asarray(Image.open(overlay)).shape[:2] == (128, 128)
    assert np.array_equal(np.asarray(Image.open(color))[..., :3], want.color)
    assert errors is not None and len(prob_maps) == 4 and "circle" in legend


def test_prediction_without_ground_truth_shows_the_checkpoints_own_scores(finished_run):
    c, token, run_id, _, _ = finished_run
    out = c.predict(
        token, f"run:{run_id}", None, [handle_file(str(EXAMPLE))], None, None, 0.5, False, api_name="/predict"
    )
    table, errors, prob_maps, details = out[4], out[6], out[7], out[9]
    assert table["headers"][2] == "val IoU (from the checkpoint's validation set)"
    assert errors is None and not prob_maps
    assert not details["ground_truth"] and details["checkpoint_val_miou"] is not None
    assert sum(r["predicted_share"] for r in details["per_class"]) == pytest.approx(1.0)


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
    from segdemo.ui.train_tab import ROWS

    names = [name for row in ROWS for name in row]  # the settings as the page lays them out: /plan's outputs
    shapes = dict(zip([*names, "why"], c.predict("10min", "builtin", None, 768, api_name="/plan"), strict=True))
    photos = dict(zip([*names, "why"], c.predict("10min", "zip", handle_file(str(z)), 768, api_name="/plan"),
                      strict=True))  # fmt: skip
    assert shapes["image_size"] <= 128 and "10 minutes" in shapes["why"] and "img/s measured here" in shapes["why"]
    assert shapes["time_budget"] == 10 and photos["time_budget"] == 10
    assert f"{photos['image_size']} px" in photos["why"] and f"{photos['epochs']} epochs of " in photos["why"]
    assert photos["image_size"] > shapes["image_size"]  # 12 big photos afford a larger scale than 768 small ones
    with pytest.raises(AppError):
        c.predict("an hour", "builtin", None, 768, api_name="/plan")


def test_a_picture_sent_again_is_never_rewritten_under_a_reader(tmp_path):
    """Gradio names output pictures by a hash of their bytes; sending one again must never truncate the
    copy a browser is reading (segdemo.ui.common.write_pictures_to_cache_atomically). Gradio's own
    write gave this reader hundreds of short reads in 100 saves."""
    import threading

    from gradio import processing_utils as pu
    from PIL import Image

    from segdemo.ui.common import write_pictures_to_cache_atomically

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
