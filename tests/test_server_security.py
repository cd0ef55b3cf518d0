"""The server as an attacker sees it: file routes, upload limits, monitoring, error messages."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytest  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from segdemo.server.jobs import JobManager  # noqa: E402
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    from segdemo.ui import build_demo, launch

    tmp = tmp_path_factory.mktemp("sec")
    (tmp / "secret.txt").write_text("top secret")
    jobs = JobManager(tmp / "runs", max_concurrent=1, reaper=False)
    demo = build_demo(jobs, cache_dir=tmp / "cache")
    port = free_port()
    launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}"
    demo.close()
    jobs.close()


def status(url: str, method: str = "GET", data: bytes | None = None, headers=None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.parametrize(
    "path",
    [
        "../../../../etc/passwd",
        "/etc/passwd",
        "/ETC/PASSWD",
        "..%2f..%2f..%2fetc%2fpasswd",
        str(ROOT / "app.py"),
        str(ROOT / "segdemo" / "checkpoint.py"),
        str(ROOT / "EXAMPLES" / ".." / "app.py"),
        str(ROOT / "examples" / ".." / "app.py"),
    ],
)
def test_file_route_does_not_serve_files_outside_the_app(url, path):
    code, body = status(f"{url}/gradio_api/file={path}")
    assert code in (403, 404), (code, body[:200])
    assert b"root:" not in body and b"import" not in body


def test_examples_are_served(url):
    example = ROOT / "examples" / "shapes_1.png"
    if not example.exists():
        pytest.skip("no examples folder")
    code, body = status(f"{url}/gradio_api/file={example}")
    assert code == 200 and body[:4] == b"\x89PNG"


def test_upload_over_the_limit_gets_413(url):
    boundary = "segdemoboundary"
    payload = b"\0" * (51 * 1024 * 1024)  # the app allows 50 MB
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.zip"\r\n'
            f"Content-Type: application/zip\r\n\r\n"
        ).encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    code, _ = status(
        f"{url}/gradio_api/upload", "POST", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert code == 413


def test_monitoring_route_is_off(url):
    for path in ("/monitoring", "/gradio_api/monitoring", "/monitoring/summary"):
        code, body = status(url + path)
        assert code != 200 or b"monitoring" not in body.lower(), (path, code, body[:200])


def test_errors_do_not_leak_paths_or_tracebacks(url, tmp_path):
    c = Client(url + "/", verbose=False, ssl_verify=False)  # plain http: no certificate store per request
    token = c.predict(None, api_name="/session")
    bogus = tmp_path / "not-an-image.png"
    bogus.write_text("<html><script>alert(1)</script></html>")
    with pytest.raises(AppError) as err:
        c.predict(token, "default", None, [handle_file(str(bogus))], None, None, 0.5, False, api_name="/predict")
    msg = str(err.value)
    assert "Traceback" not in msg and str(ROOT) not in msg and "/tmp/" not in msg
    assert "not-an-image.png" in msg  # it names the user's own file, by its name only


def test_a_gradio_the_picture_patch_was_not_written_for_is_loud(monkeypatch, caplog):
    import gradio as gr
    from gradio import processing_utils as pu

    from segdemo.ui import picture_cache as common

    assert common.picture_patch_mismatch() is None  # the pinned gradio: the patch fits
    monkeypatch.setattr(gr, "__version__", "7.0.0")
    monkeypatch.setattr(pu, "save_pil_to_cache", lambda img, cache_dir, name="image", format="webp": "")  # unpatched
    with pytest.warns(RuntimeWarning, match="written for gradio 6.31.0, and this is gradio 7.0.0"):
        common.write_pictures_to_cache_atomically()
    assert "written for gradio 6.31.0" in caplog.text
