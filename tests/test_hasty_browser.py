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
