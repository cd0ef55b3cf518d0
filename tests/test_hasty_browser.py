"""A hasty student in headless Chromium: clicks before the page is ready, uploads after trying an example.

Every check reads what the page says and compares it with what the server did: no number on the page is false."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_app_browser import CHROMIUM, app_url, page, screenshot_on_failure  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}: browser test skipped")


def test_train_clicked_before_the_plan_lands_trains_what_the_page_then_shows(app_url, page):  # noqa: F811
    from playwright.sync_api import expect

    with screenshot_on_failure(page, "test_train_clicked_before_the_plan_lands"):
        page.goto(app_url)
        page.locator("#train-btn").click()  # at once: the data check and the preset's plan are still running
        status = page.locator("#run-status")
        expect(status).to_contain_text("This run's settings", timeout=120_000)
        run_epochs = int(re.search(r"up to (\d+) epoch", status.inner_text()).group(1))
        why = page.locator("#preset-why")
        expect(why).to_contain_text("epochs", timeout=120_000)  # the plan landed
        planned = int(re.search(r"up to (\d+) epochs", why.inner_text()).group(1))
        assert run_epochs == planned, (status.inner_text(), why.inner_text())
        expect(page.locator("#epochs input[type=number]")).to_have_value(str(planned))
        size = page.locator("#image-size input[type=number]").input_value()
        assert f"· {size} px ·" in status.inner_text()
        page.locator("#stop-btn").click()
        expect(status).to_contain_text("Stopped", timeout=120_000)
        assert f"up to {planned} epoch" in status.inner_text()


def test_a_photo_uploaded_after_an_example_is_the_picture_and_gets_a_plain_warning(app_url, page, tmp_path):  # noqa: F811
    from PIL import Image
    from playwright.sync_api import expect

    from tests.test_familiar import _photo

    cat = tmp_path / "my_cat.jpg"
    Image.fromarray(_photo()).save(cat, quality=92)
    with screenshot_on_failure(page, "test_a_photo_uploaded_after_an_example"):
        page.goto(app_url)
        page.get_by_role("tab", name="Predict").click()
        info = page.locator("#model-info")
        expect(info).to_contain_text("can only answer in these classes", timeout=60_000)
        expect(info).to_contain_text("Trained on the built-in shapes")
        page.locator("#examples img").first.click()  # an example first, with its true mask
        summary = page.locator("#predict-summary")
        expect(summary).to_contain_text("shapes_1.png", timeout=90_000)
        assert "unlike" not in summary.inner_text()
        page.locator("#predict-images input[type=file]").set_input_files(str(cat))  # then their own photo
        expect(summary).to_contain_text("my_cat.jpg", timeout=90_000)
        expect(summary).to_contain_text("looks unlike the images this model was trained on")
        assert "against its mask" not in summary.inner_text()  # the example's mask is not the cat's
