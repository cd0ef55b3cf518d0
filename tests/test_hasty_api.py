"""A hasty student through gradio_client: Train pressed before the page's plan landed trains the plan (as the
page then shows), not the fixed defaults; a plan that has landed, or an API caller's own settings, are kept."""

from __future__ import annotations

import os
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytest  # noqa: E402

from segdemo.ui.settings import SETTINGS, preset_values  # noqa: E402
from tests.conftest import api_session as session  # noqa: E402
from tests.conftest import in_process_app, tiny_train_args  # noqa: E402

NAMES = [s.name for s in SETTINGS]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with in_process_app(tmp_path_factory.mktemp("hasty")) as (url, jobs, demo):
        yield url, jobs


def _plan(c, n: int) -> dict:
    out = c.predict("minute", "builtin", None, n, api_name="/plan")
    return dict(zip(NAMES, out[: len(NAMES)], strict=True))


def _stop_and_wait(c, token, jobs, run_id):
    c.predict(token, run_id, api_name="/stop")
    deadline = time.monotonic() + 120
    while jobs.get(token, run_id).is_active:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_train_pressed_while_the_plan_is_processing_trains_the_plan(server):
    url, jobs = server
    c, token = session(url)
    c.predict("10min", "builtin", None, 32, api_name="/plan")  # the page's plan is for another preset:
    # the student chose "About a minute" and pressed Train before its plan landed; the page still showed its
    # opening values, apart from the images slider (the student's own)
    opening = {**preset_values(), "train_images": 32}
    opening.pop("encoder_weights")
    args = {**tiny_train_args(preset="minute"), **opening}
    run_id, _ = c.predict(token, **args, api_name="/train")
    cfg = jobs.get(token, run_id).config
    _stop_and_wait(c, token, jobs, run_id)
    want = _plan(c, 32)  # the plan for what the run was started with (the timed probe is cached)
    assert (cfg.train.epochs, cfg.data.image_size, cfg.model.width) == (
        want["epochs"],
        want["image_size"],
        want["width"],
    )
    assert cfg.train.time_budget_s == pytest.approx(want["time_budget"] * 60)
    assert cfg.train.epochs != opening["epochs"]  # not the opening values the page showed before its plan landed


def test_settings_changed_by_hand_before_the_plan_landed_stay_the_students(server):
    url, jobs = server
    c, token = session(url)
    c.predict("10min", "builtin", None, 32, api_name="/plan")
    opening = {**preset_values(), "train_images": 32, "epochs": 1, "image_size": 32}
    opening.pop("encoder_weights")
    run_id, _ = c.predict(token, **{**tiny_train_args(preset="minute"), **opening}, api_name="/train")
    cfg = jobs.get(token, run_id).config
    _stop_and_wait(c, token, jobs, run_id)
    want = _plan(c, 32)
    assert (cfg.train.epochs, cfg.data.image_size) == (1, 32)  # changed by hand: the student's
    assert cfg.train.time_budget_s == pytest.approx(want["time_budget"] * 60)  # untouched: the plan's


def test_a_plan_that_landed_keeps_the_students_changes(server):
    url, jobs = server
    c, token = session(url)
    _plan(c, 32)
    run_id, _ = c.predict(token, **tiny_train_args(train_images=32, epochs=1), api_name="/train")
    cfg = jobs.get(token, run_id).config
    assert (cfg.train.epochs, cfg.data.image_size, cfg.model.width) == (1, 32, 4)
    _stop_and_wait(c, token, jobs, run_id)


def test_an_api_caller_without_a_page_trains_its_own_settings(server):
    url, jobs = server
    c, token = session(url)
    run_id, _ = c.predict(token, **tiny_train_args(epochs=1), api_name="/train")
    cfg = jobs.get(token, run_id).config
    assert (cfg.train.epochs, cfg.data.image_size) == (1, 32)
    _stop_and_wait(c, token, jobs, run_id)
    statuses = [out[0] for out in c.submit(token, run_id, api_name="/watch")]
    assert "This run's settings**: up to 1 epoch · time budget" in statuses[-1]
