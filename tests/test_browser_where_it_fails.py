"""Where it fails, in headless Chromium against `python app.py`: the confusion matrix and the worst validation
images fill after an epoch; in Predict, the opacity slider and the class toggles redraw the picture without the
model running again (counted in the server's own log, one line per prediction), and a webcam photo is
segmented.

Screenshots land in test-artifacts/ when a step fails.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import app_subprocess
from tests.test_app_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    EXAMPLE,
    EXAMPLE_MASK,
    _set_number,
    screenshot_on_failure,
)
from tests.test_app_browser import page as page  # noqa: F401  (the fixture)

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}: browser test skipped")
MODEL_RAN = "the model ran"  # segdemo/ui/predict_tab.py logs it once per prediction


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """(url, the server's log file): app.py with the shipped model, one training slot."""
    with app_subprocess(tmp_path_factory.mktemp("where-app")) as served:
        yield served


def test_confusion_and_worst_images_fill_after_an_epoch(app, page):
    from playwright.sync_api import expect

    url, _ = app
    with screenshot_on_failure(page, "test_confusion_and_worst_images_fill_after_an_epoch"):
        page.goto(url)
        expect(page.locator("#data-report")).to_contain_text("Ready to train", timeout=90_000)
        for elem, value in (("image-size", 32), ("width", 4), ("train-images", 32), ("epochs", 30)):
            _set_number(page, elem, value)
        confusion, worst = page.locator("#confusion"), page.locator("#worst-images")
        assert "Most confused" not in confusion.inner_text()  # empty before the first epoch
        page.locator("#train-btn").click()
        expect(confusion).to_contain_text("Confusion on the validation images after epoch", timeout=120_000)
        expect(confusion).to_contain_text("Most confused")
        for name in ("background", "circle", "square", "triangle"):  # both axes name the classes
            assert confusion.locator("th", has_text=name).count() == 2, name
        assert confusion.locator("td").count() == 16
        expect(worst.locator("img").first).to_be_visible()
        expect(worst).to_contain_text("mIoU")  # each worst image captioned with its own score
        expect(page.locator("#filmstrip img").first).to_be_visible()  # and the fixed filmstrip still there
        page.locator("#stop-btn").click()
        expect(page.locator("#run-status")).to_contain_text("Stopped", timeout=60_000)


def _model_runs(log: Path) -> int:
    return log.read_text().count(MODEL_RAN)


def _slider_pictures(page) -> list[str]:
    return page.locator("#out-slider img").evaluate_all("imgs => imgs.map(i => i.src)")


def _wait_for_new_pictures(page, before: list[str], timeout_s: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = _slider_pictures(page)
        if now and now != before:
            return now
        time.sleep(0.05)
    raise AssertionError(f"the slider's pictures did not change from {before}")


def test_opacity_and_class_toggles_redraw_without_the_model(app, page):
    from playwright.sync_api import expect

    url, log = app
    with screenshot_on_failure(page, "test_opacity_and_class_toggles_redraw_without_the_model"):
        page.goto(url)
        page.get_by_role("tab", name="Predict").click()
        page.locator("#predict-images input[type=file]").set_input_files(str(EXAMPLE))
        page.locator("#predict-masks input[type=file]").set_input_files(str(EXAMPLE_MASK))
        expect(page.get_by_text("against its mask")).to_be_visible(timeout=60_000)
        expect(page.locator("#out-slider img").first).to_be_visible()
        expect(page.locator("#predict-confusion")).to_contain_text("Confusion on this image (shapes_3.png)")
        expect(page.locator("#error-map img").first).to_be_visible()
        time.sleep(1)  # the upload's follow-up predictions (image, then mask) have settled
        runs = _model_runs(log)
        assert runs >= 1  # the log does count predictions
        pictures = _slider_pictures(page)
        # a student drags the opacity slider (the range input's own events, as a mouse sends them)
        page.locator("#opacity input[type=range]").evaluate(
            "r => { r.value = '0.9'; r.dispatchEvent(new Event('input', {bubbles: true}));"
            " r.dispatchEvent(new Event('change', {bubbles: true})); }"
        )
        pictures = _wait_for_new_pictures(page, pictures)
        page.locator("#shown-classes").get_by_label("background").uncheck()
        pictures = _wait_for_new_pictures(page, pictures)
        time.sleep(1)
        assert _model_runs(log) == runs  # both redrawn from the kept prediction
        page.locator("#segment-btn").click()  # while Segment runs the model again
        expect(page.locator("#shown-classes").get_by_label("background")).to_be_checked(timeout=60_000)
        assert _model_runs(log) == runs + 1
        assert "Traceback" not in page.content()


def test_a_webcam_photo_is_segmented(app):
    """Chromium's fake camera (a test pattern) stands in for a webcam."""
    from playwright.sync_api import expect, sync_playwright

    url, log = app
    fake_camera = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, *fake_camera])
        page = browser.new_context(viewport={"width": 1400, "height": 1000}, permissions=["camera"]).new_page()
        page.set_default_timeout(60_000)
        try:
            with screenshot_on_failure(page, "test_a_webcam_photo_is_segmented"):
                page.goto(url)
                page.get_by_role("tab", name="Predict").click()
                runs = _model_runs(log)
                page.get_by_text("Or take a photo with the webcam").click()
                page.get_by_text("Click to Access Webcam").click()
                page.wait_for_function(  # the camera streams frames before the shutter means anything
                    "() => { const v = document.querySelector('#webcam video');"
                    " return v && v.readyState >= 2 && v.currentTime > 0; }",
                    timeout=30_000,
                )
                page.locator("#webcam button[aria-label='capture photo']").click()
                expect(page.locator("#predict-images")).to_contain_text("image", timeout=30_000)  # the photo
                expect(page.locator("#predict-table")).to_contain_text("share of predicted pixels", timeout=60_000)
                expect(page.locator("#out-slider img").first).to_be_visible()
                assert _model_runs(log) > runs
        finally:
            browser.close()
