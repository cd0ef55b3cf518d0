"""Driving the Label tab's editor in Chromium (Playwright), as a student does; shared by
tests/test_label_browser.py and bench/label_speed.py."""

from __future__ import annotations

import time

STATUS_WORDS = ("processing", "queue:")  # what gradio's status tracker reads while an event is unfinished


def busy(page, elem_id: str) -> bool:
    text = page.locator(f"#{elem_id}").inner_text()
    return any(w in text for w in STATUS_WORDS)


def open_photo(page, action, timeout_s: float = 90) -> float:
    """Do `action` (which puts another photo in the editor) and wait until the editor shows it: its canvas
    shows another picture, holds still, and the event has finished (its spinner is on the photo list and the
    progress line). Until then the editor holds the previous photo, whose paint the server refuses to save
    onto this one. The editor itself must never show a status: gradio can leave that overlay up for good
    (ui/label_tab.py). Returns the seconds it took."""
    canvas = page.locator("#label-editor canvas").first
    before = canvas.screenshot()
    action()
    started = time.monotonic()
    last = before
    while time.monotonic() - started < timeout_s:
        page.wait_for_timeout(300)
        assert not busy(page, "label-editor"), "the editor shows a status overlay"
        shot = canvas.screenshot()
        if shot != before and shot == last and not busy(page, "label-progress") and not busy(page, "label-photo"):
            return time.monotonic() - started
        last = shot
    raise AssertionError(f"the editor did not show the next photo within {timeout_s:.0f} s")


def pick_class(page, i: int) -> None:
    """Choose class i's colour in the editor's palette (the palette opens from the Color button)."""
    editor = page.locator("#label-editor")
    swatch = editor.locator("menu.swatch button.color").nth(i)
    for _ in range(3):
        if swatch.is_visible():
            break
        editor.locator("button[title=Color]").click()
        page.wait_for_timeout(200)
    swatch.click()


def stroke(page, points: list[tuple[float, float]]) -> None:
    """One brush stroke through `points` (page pixels)."""
    page.mouse.move(*points[0])
    page.mouse.down()
    for p in points[1:]:
        page.mouse.move(*p, steps=6)
    page.mouse.up()
