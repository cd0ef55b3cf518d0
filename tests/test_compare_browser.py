"""The Compare tab in headless Chromium: two tiny runs (the second queued by a one-click ablation), both curves
on one plot, the differing setting highlighted, the filmstrip GIF offered, and another browser sees none of it.

Its own `python app.py` (the fixtures of test_app_browser.py, a module-scoped server per test module).
"""

from __future__ import annotations

import io
import urllib.request

import pytest
from PIL import Image

from tests.test_app_browser import (  # noqa: F401  (app_url and page are fixtures)
    CHROMIUM,
    _set_number,
    app_url,
    page,
    screenshot_on_failure,
)

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}: browser test skipped")
MINUTE = 60_000


def test_compare_two_runs_after_a_one_click_ablation(app_url, page):  # noqa: F811
    with screenshot_on_failure(page, "test_compare_two_runs_after_a_one_click_ablation"):
        _compare_session(app_url, page)


def _compare_session(url, page):  # noqa: F811
    from playwright.sync_api import expect

    page.goto(url)
    expect(page.locator("#data-report")).to_contain_text("Ready to train", timeout=90_000)
    for elem_id, value in (("image-size", 32), ("width", 4), ("train-images", 32), ("epochs", 1)):
        _set_number(page, elem_id, value)
    page.locator("#train-btn").click()
    expect(page.locator("#run-status")).to_contain_text("Finished", timeout=2 * MINUTE)

    # the finished run's filmstrip as a GIF: one frame for its one epoch
    page.locator("#run-gif").click()
    link = page.locator("#run-gif-file a").first
    expect(link).to_be_visible(timeout=MINUTE)
    with Image.open(io.BytesIO(urllib.request.urlopen(link.get_attribute("href"), timeout=30).read())) as gif:
        assert gif.format == "GIF" and gif.n_frames == 1

    page.get_by_role("tab", name="Compare").click()
    button = page.locator("#ablate-loss")
    expect(button).to_have_text("Same run, Dice instead of CE + Dice", timeout=MINUTE)
    button.click()
    expect(page.locator("#ablate-status")).to_contain_text("Queued", timeout=MINUTE)
    # the variant trains (streamed in the Train tab); when it ends the list ticks it and compares both
    expect(page.locator("#ablate-status")).to_contain_text("has ended", timeout=2 * MINUTE)
    runs = page.locator("#compare-runs label")
    expect(runs).to_have_count(2)
    names = [t.split(" · ")[0].strip() for t in runs.all_inner_texts()]
    assert len(set(names)) == 2 and all(n.startswith("run ") for n in names), names
    assert page.locator("#compare-runs input[type=checkbox]:checked").count() == 2
    plot = page.locator("#compare-curves")
    expect(plot.locator("svg").first).to_be_visible()
    for name in names:  # both curves are in the plot: each run has its entry in the legend
        expect(plot).to_contain_text(name)
    differs = page.locator("#compare-settings tr.differs")
    expect(differs).to_have_count(1)
    expect(differs).to_contain_text("Loss")
    expect(differs).to_contain_text("CE + Dice")
    expect(differs).to_contain_text("Dice")
    expect(page.locator("#compare-differs")).to_contain_text("Settings that differ: Loss")
    expect(page.locator("#compare-iou")).to_contain_text("mean (mIoU)")
    for name in names:
        expect(page.locator("#compare-iou")).to_contain_text(name)
    assert "Traceback" not in page.content()

    # another browser (its own storage, so its own token) has no runs to compare
    other = page.context.browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    other.goto(url)
    expect(other.locator("#data-report")).to_contain_text("Ready to train", timeout=MINUTE)
    other.get_by_role("tab", name="Compare").click()
    expect(other.locator("#compare-note")).to_contain_text("Tick two or more runs", timeout=MINUTE)
    assert other.locator("#compare-runs label").count() == 0
    expect(other.locator("#ablate-loss")).to_be_disabled()
