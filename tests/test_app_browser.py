"""The app in headless Chromium, as a student uses it: train on the built-in data, watch, stop, predict.

Starts `python app.py` on a free port. Screenshots land in test-artifacts/ when a step fails.
"""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import app_subprocess

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
EXAMPLE = ROOT / "examples" / "shapes_3.png"
EXAMPLE_MASK = ROOT / "examples" / "masks" / "shapes_3.png"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}: browser test skipped")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    with app_subprocess(tmp_path_factory.mktemp("browser-app")) as (url, _):
        yield url


@pytest.fixture
def page(request):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(60_000)
        try:
            yield pg
        finally:
            browser.close()


def screenshot_on_failure(page, name: str):
    """Context manager: a full-page screenshot in test-artifacts/ if the block raises."""
    import contextlib

    @contextlib.contextmanager
    def guard():
        try:
            yield
        except BaseException:
            ARTIFACTS.mkdir(exist_ok=True)
            try:
                page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
            except Exception:
                pass
            raise

    return guard()


def _set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def _onnx_download(page, button: str, file: str) -> None:
    """Click an ONNX export button; the offered zip holds the model, its meta.json and the predict script."""
    import io
    import zipfile

    from playwright.sync_api import expect

    if not __import__("importlib").util.find_spec("onnx"):
        return  # the optional export extra is not installed: the button says how to install it instead
    page.locator(button).click()
    link = page.locator(f"{file} a").first
    expect(link).to_be_visible(timeout=60_000)
    data = urllib.request.urlopen(link.get_attribute("href"), timeout=30).read()
    names = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
    assert {n.split("/", 1)[1] for n in names} == {
        "model.onnx",
        "meta.json",
        "predict_onnx.py",
        "README.md",
        "requirements.txt",
    }, names


def test_train_watch_stop_then_predict(app_url, page):
    with screenshot_on_failure(page, "test_train_watch_stop_then_predict"):
        _student_session(app_url, page)


def _student_session(app_url, page):
    from playwright.sync_api import expect

    page.goto(app_url)
    expect(page.locator("#data-report")).to_contain_text("Ready to train", timeout=90_000)
    # the Quick preset, shrunk so the test is quick: small images, a thin net, few images, many epochs
    _set_number(page, "image-size", 32)
    _set_number(page, "width", 4)
    _set_number(page, "train-images", 64)
    _set_number(page, "epochs", 40)
    page.locator("#train-btn").click()
    status = page.locator("#run-status")
    expect(status).to_contain_text("64 training", timeout=90_000)
    # after the first epoch: a per-class row, the curves and the filmstrip
    expect(page.locator("#iou-table")).to_contain_text("mean (mIoU)", timeout=120_000)
    expect(page.locator("#iou-table")).to_contain_text("triangle")
    expect(page.locator("#curves svg").first).to_be_visible()  # a gr.LinePlot, drawn by the browser
    expect(page.locator("#curves")).to_contain_text("val mIoU")  # its legend
    expect(page.locator("#filmstrip img").first).to_be_visible()
    assert page.locator("#filmstrip img").count() >= 3
    expect(status).to_contain_text("Epoch")
    # closing or reloading the page does not stop the run: the page finds it again and keeps streaming
    page.reload()
    expect(status).to_contain_text("64 training", timeout=60_000)
    expect(page.locator("#iou-table")).to_contain_text("mean (mIoU)")
    expect(page.locator("#filmstrip img").first).to_be_visible()
    page.locator("#stop-btn").click()
    expect(status).to_contain_text("Stopped", timeout=60_000)
    expect(status).to_contain_text("val mIoU")

    page.get_by_role("tab", name="Predict").click()
    expect(page.locator("#model-choice input")).to_have_value(re.compile("^Your run from"), timeout=30_000)
    page.locator("#predict-images input[type=file]").set_input_files(str(EXAMPLE))
    page.locator("#predict-masks input[type=file]").set_input_files(str(EXAMPLE_MASK))
    for elem in ("#out-slider", "#out-color"):
        expect(page.locator(f"{elem} img").first).to_be_visible(timeout=60_000)
    table = page.locator("#predict-table")
    expect(table).to_contain_text("mean (mIoU)", timeout=60_000)
    expect(page.get_by_text("against its mask")).to_be_visible(timeout=60_000)  # scored against the mask we gave
    expect(page.locator("#error-map img").first).to_be_visible()
    # a model picked by hand segments the same image and mask again (its own score, not this run's)
    summary, info = page.locator("#predict-summary"), page.locator("#model-info")
    run_score, run_info = summary.inner_text(), info.inner_text()
    page.locator("#model-choice input").click()
    page.get_by_role("option", name=re.compile("^Shipped model")).click()
    expect(info).not_to_have_text(run_info, timeout=30_000)
    expect(summary).not_to_have_text(run_score, timeout=60_000)
    expect(summary).to_contain_text("against its mask")
    # nothing on the page is a Python traceback
    assert "Traceback" not in page.content()
    _onnx_download(page, "#export-onnx", "#export-file")  # the chosen model (this run) as ONNX
    page.get_by_role("tab", name="Train").click()
    _onnx_download(page, "#run-export-onnx", "#run-export-file")  # and from the finished run's panel
    # a second run, ended while Predict still shows the shipped model's picture: the Train tab selects the new
    # run there, and the picture and score are made again by it (a stale score beside a new model's name is false)
    shipped_score = summary.inner_text()
    page.locator("#train-btn").click()
    expect(status).to_contain_text("Epoch", timeout=90_000)
    expect(page.locator("#iou-table")).to_contain_text("mean (mIoU)", timeout=120_000)
    page.locator("#stop-btn").click()
    expect(status).to_contain_text("Stopped", timeout=60_000)
    page.get_by_role("tab", name="Predict").click()
    expect(page.locator("#model-choice input")).to_have_value(re.compile("^Your run from"), timeout=30_000)
    # the box shows a timer over the old text while it works: wait for the shipped model's score to be gone
    shipped_miou = re.search(r"mIoU ([\d.]+)", shipped_score).group(1)
    expect(summary).not_to_contain_text(f"mIoU {shipped_miou}", timeout=60_000)
    expect(summary).to_contain_text("against its mask")

    # another browser (its own storage, so its own session) sees none of this run
    other = page.context.browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    other.goto(app_url)
    expect(other.locator("#data-report")).to_contain_text("Ready to train", timeout=60_000)
    expect(other.locator("#run-status")).to_contain_text("Choose data and settings")
    other.get_by_role("tab", name="Predict").click()
    other.locator("#model-choice input").click()
    expect(other.get_by_role("option").first).to_be_visible()
    assert not [t for t in other.get_by_role("option").all_inner_texts() if "Your run" in t]
    other.get_by_role("tab", name="Train").click()
    other.locator("#stop-btn").click()
    expect(other.get_by_text("Nothing is running to stop")).to_be_visible()


def test_forget_this_browser_on_a_shared_pc(app_url, page):
    """A school lab: the next student on this PC must not open the previous one's runs. The button asks first,
    then the page comes back with a new session (the token the server hands the page on load), where a plain
    reload keeps the old one."""
    import json

    tokens: list[str] = []  # the owner token the page ends up with after each load (the /session answer)

    def seen(response):
        if "/gradio_api/run/" in response.url and response.request.method == "POST":
            try:
                data = json.loads(response.text()).get("data") or []
            except Exception:
                return
            if len(data) == 1 and isinstance(data[0], str) and data[0].count(".") == 1 and len(data[0]) > 40:
                tokens.append(data[0])

    page.on("response", seen)
    with screenshot_on_failure(page, "forget-browser"):
        page.goto(app_url)
        page.wait_for_selector("#forget-browser")
        page.wait_for_function("() => window.localStorage.getItem('segdemo-owner') !== null")
        page.wait_for_timeout(1000)
        page.reload()
        page.wait_for_selector("#forget-browser")
        page.wait_for_timeout(2000)
        assert len(tokens) >= 2 and tokens[-1] == tokens[0], tokens  # a reload is the same browser session
        page.once("dialog", lambda d: d.dismiss())  # "Forget this browser?" -> Cancel keeps it
        page.click("#forget-browser")
        page.wait_for_timeout(1500)
        assert tokens[-1] == tokens[0]
        page.once("dialog", lambda d: d.accept())
        page.click("#forget-browser")
        page.wait_for_function("() => window.localStorage.getItem('segdemo-owner') !== null", timeout=30_000)
        page.wait_for_timeout(3000)  # the reload and its /session answer
        assert tokens[-1] != tokens[0], tokens
        stored = page.evaluate("() => Object.keys(window.localStorage)")
        assert not [k for k in stored if "history" in k.lower()], stored  # gradio's run history is off
