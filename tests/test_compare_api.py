"""Compare, ablations and the filmstrip GIF through the running app (gradio_client): what a browser may see and
change of its own runs, that nobody else can list, compare, vary or download them, and hostile input.

A real server on a free port, real tiny runs (32 px, width 4, 2 epochs), the real job queue.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytest  # noqa: E402
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image  # noqa: E402

from tests.conftest import api_session as session
from tests.conftest import in_process_app, tiny_train_args

XSS = '<img src=x onerror="window.__xss=1">'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with in_process_app(tmp_path_factory.mktemp("compare-app")) as (url, jobs, demo):
        yield url, jobs


def wait_done(c: Client, token: str, run_id: str) -> dict:
    list(c.submit(token, run_id, api_name="/watch"))  # streams until the run ends
    info = c.predict(token, run_id, api_name="/run_info")
    assert info["finished"], info
    return info


@pytest.fixture(scope="module")
def two_runs(server):
    """A 2-epoch run of browser A, and its one-click variant with Dice instead of CE + Dice, both finished."""
    url, _ = server
    c, token = session(url)
    base = c.predict(token, **tiny_train_args(epochs=2, loss="ce_dice"), api_name="/train")[0]
    assert wait_done(c, token, base)["status"] == "done"
    queued = c.predict(token, base, "loss", api_name="/ablate")
    assert "Dice instead of CE + Dice" in queued["message"]
    variant = queued["run_id"]
    assert variant != base
    assert wait_done(c, token, variant)["status"] == "done"
    return c, token, base, variant


@pytest.mark.parametrize("change", ["loss", "augment", "upsampling"])
def test_each_ablation_changes_one_setting(change):
    from segdemo.ui.compare_tab import ABLATIONS, settings_of, variant_of
    from tests.conftest import tiny_config

    cfg = tiny_config()
    before = cfg.to_dict()
    variant = variant_of(cfg, change)
    assert cfg.to_dict() == before  # the run's own config is left alone
    a, b = settings_of(cfg), settings_of(variant)
    changed = [k for k in a if a[k] != b[k]]
    assert len(changed) == 1, changed
    assert ABLATIONS[change].label(cfg) != ABLATIONS[change].label(variant)
    twice = variant_of(variant, change)
    if change == "loss":  # CE + Dice -> Dice -> plain CE: a Dice run is compared with cross-entropy
        assert (variant.train.loss, twice.train.loss) == ("dice", "ce")
    else:  # a switch: twice is the run itself
        assert twice.to_dict() == before


def test_my_runs_lists_this_browsers_runs_by_name(two_runs):
    c, token, base, variant = two_runs
    runs = c.predict(token, api_name="/my_runs")
    assert [r["run_id"] for r in runs] == [base, variant]
    assert len({r["name"] for r in runs}) == 2 and all(r["name"].startswith("run ") for r in runs)
    assert [r["settings"]["Loss"] for r in runs] == ["CE + Dice", "Dice"]
    assert all(r["epochs_done"] == 2 and 0 <= r["best_miou"] <= 1 for r in runs)


def test_the_variant_differs_in_the_loss_alone_and_went_through_the_queue(two_runs, server):
    _, jobs = server
    _, token, base, variant = two_runs
    a, b = jobs.get(token, base), jobs.get(token, variant)
    assert (a.config.train.loss, b.config.train.loss) == ("ce_dice", "dice")
    b.config.train.loss = "ce_dice"
    assert b.config.to_dict() == a.config.to_dict()
    b.config.train.loss = "dice"
    assert b.client_key == a.client_key is not None  # counted against this address like a Train click
    assert b.run_dir.parent == a.run_dir.parent and b.run_dir != a.run_dir


def test_compare_overlays_curves_per_class_iou_and_flags_the_differing_setting(two_runs):
    c, token, base, variant = two_runs
    names = [r["name"] for r in c.predict(token, api_name="/my_runs")]
    out = c.predict(token, [base, variant], "val mIoU", api_name="/compare")
    assert [r["run_id"] for r in out["runs"]] == [base, variant]
    assert sorted({(p["run"], p["epoch"]) for p in out["curves"]}) == sorted((n, e) for n in names for e in (1, 2))
    assert all(0 <= p["value"] <= 1 for p in out["curves"])
    table = out["per_class_iou"]
    assert table["headers"][0] == "class" and all(any(n in h for h in table["headers"]) for n in names)
    assert [row[0] for row in table["data"]] == ["background", "circle", "square", "triangle", "mean (mIoU)"]
    assert out["differ"] == ["Loss"]
    loss = next(s for s in out["settings"] if s["setting"] == "Loss")
    assert loss == {"setting": "Loss", "values": ["CE + Dice", "Dice"], "differs": True}
    losses = c.predict(token, [variant, base], "train loss", api_name="/compare")["curves"]
    assert [p["run"] for p in losses][:2] == [names[1]] * 2 and any(p["value"] > 1e-3 for p in losses)


def test_the_filmstrip_gif_has_one_frame_per_epoch(two_runs):
    c, token, base, _ = two_runs
    out = c.predict(token, base, api_name="/filmstrip_gif")
    path = out["value"] if isinstance(out, dict) else out
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 2
    assert os.path.getsize(path) < 2 << 20


def test_another_browser_cannot_list_compare_vary_or_download_the_runs(two_runs, server):
    url, jobs = server
    _, token, base, variant = two_runs
    other, other_token = session(url)
    assert other.predict(other_token, api_name="/my_runs") == []
    n_jobs = len(jobs.jobs_for(token))
    attempts = [
        lambda: other.predict(other_token, [base], "val mIoU", api_name="/compare"),
        lambda: other.predict(other_token, [base, variant], "val mIoU", api_name="/compare"),
        lambda: other.predict(other_token, base, "loss", api_name="/ablate"),
        lambda: other.predict(other_token, base, api_name="/filmstrip_gif"),
    ]
    for attempt in attempts:
        with pytest.raises(AppError, match="No such run") as e:
            attempt()
        assert base not in str(e.value)
    assert jobs.jobs_for(other_token) == [] and len(jobs.jobs_for(token)) == n_jobs
    # without a token this server signed, nothing at all
    for name, args in (("/my_runs", ()), ("/compare", ([base], "val mIoU")), ("/ablate", (base, "loss"))):
        with pytest.raises(AppError, match="not recognised"):
            other.predict("made-up.token", *args, api_name=name)


@pytest.mark.parametrize(
    "endpoint, args, words",
    [
        ("/compare", ("not a list", "val mIoU"), "list of run ids"),
        ("/compare", ({"a": 1}, "val mIoU"), "list of run ids"),
        ("/compare", ([1, 2], "val mIoU"), "list of run ids"),
        ("/compare", (["x"] * 500, "val mIoU"), "at most 8 runs"),
        ("/compare", ([XSS], "val mIoU"), "No such run"),
        ("/compare", ([], "val mIoU"), "at least one run"),
        ("/compare", (["../../etc/passwd"], XSS), "Choose the metric"),
        ("/ablate", ("../../etc/passwd", "loss"), "No such run"),
        ("/ablate", (None, "loss"), "Choose the run"),
        ("/ablate", (["a"], "loss"), "Choose the run"),
        ("/ablate", ("x", XSS), "Choose the change from: loss, augment, encoder, upsampling"),
        ("/filmstrip_gif", ("../../etc/passwd",), "No such run"),
    ],
)
def test_hostile_input_gets_a_sentence_and_changes_nothing(server, endpoint, args, words):
    url, jobs = server
    c, token = session(url)
    with pytest.raises(AppError) as e:
        c.predict(token, *args, api_name=endpoint)
    msg = str(e.value)
    assert words.lower() in msg.lower(), msg
    assert "<img" not in msg and "Traceback" not in msg and "/tmp/" not in msg, msg
    assert jobs.jobs_for(token) == []


def test_a_variant_waits_like_any_run_one_at_a_time_per_browser(two_runs, server):
    c, token, base, _ = two_runs
    first = c.predict(token, base, "augment", api_name="/ablate")
    assert "no augmentation" in first["message"]
    try:
        with pytest.raises(AppError, match="already have a run in progress"):
            c.predict(token, base, "upsampling", api_name="/ablate")
        with pytest.raises(AppError, match="still training"):
            c.predict(token, first["run_id"], "loss", api_name="/ablate")
    finally:
        c.predict(token, first["run_id"], api_name="/stop")
    deadline = time.time() + 60
    while c.predict(token, first["run_id"], api_name="/run_info")["status"] in ("queued", "running"):
        assert time.time() < deadline
        time.sleep(0.5)


def test_the_encoder_ablation_is_from_scratch_against_the_imagenet_encoder():
    from segdemo.ui.compare_tab import ABLATIONS, settings_of, variant_of
    from tests.conftest import tiny_config

    cfg = tiny_config()  # the tutorial U-Net from scratch
    variant = variant_of(cfg, "encoder")
    assert "ImageNet encoder" in ABLATIONS["encoder"].label(cfg)
    assert variant.model.encoder == "efficientnet_lite0" and variant.model.pretrained
    assert variant.data.mean == (0.5, 0.5, 0.5) and variant.model.width >= 16 and variant.model.depth == 4
    a, b = settings_of(cfg), settings_of(variant)
    assert {k for k in a if a[k] != b[k]} >= {"Encoder", "Pretrained"}
    back = variant_of(variant, "encoder")
    assert "from scratch" in ABLATIONS["encoder"].label(variant)
    assert back.model.encoder == "unet" and not back.model.pretrained and back.data.mean == cfg.data.mean
