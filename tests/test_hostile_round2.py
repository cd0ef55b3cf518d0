"""A public server's second round against hostile visitors (issue 19): the doors around the queue, the disk,
decompression, shared PCs, and runs that must always end. Each test reproduces one class of attack on the
real app (a live server, gradio_client, real files) or on the engine piece that guards it."""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from segdemo.core import speedups
from segdemo.core.config import RunConfig
from segdemo.core.weights_file import MAX_WEIGHTS_BYTES, check_weights_file
from segdemo.errors import ConfigError, LimitError
from segdemo.server.jobs import DONE, FAILED, JobManager
from segdemo.server.limits import RateLimiter
from segdemo.server.tokens import OwnerTokens
from segdemo.training import recipes
from tests.conftest import api_session, in_process_app, tiny_config, tiny_train_args


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app, with a Gradio cache of its own (GRADIO_TEMP_DIR), so the disk it counts is this server's."""
    tmp = tmp_path_factory.mktemp("round2")
    old = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(tmp / "gradio")
    try:
        with in_process_app(tmp) as (url, jobs, demo):
            yield url, jobs, demo
    finally:
        if old is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = old


@pytest.fixture(scope="module")
def finished(server):
    """A tiny finished run of one browser: (client, token, run id)."""
    url, jobs, _ = server
    c, token = api_session(url)
    run_id, _ = c.predict(token, **tiny_train_args(), api_name="/train")
    for _ in c.submit(token, run_id, api_name="/watch"):
        pass
    assert jobs.get(token, run_id).status == DONE
    return c, token, run_id


# -- the doors around the queue ------------------------------------------------------------------------------


def test_queued_functions_cannot_be_called_around_the_queue(server):
    """/gradio_api/run/<api> used to call any queued function directly, outside its concurrency limit and the
    queue's caps; an fn_index reached private ones the same way."""
    url, _, demo = server
    body = json.dumps({"data": ["builtin", None, 32]}).encode()
    code, text = post(url + "gradio_api/run/check_data", body)
    assert code == 404 and "join the queue" in text
    private = next(i for i, fn in demo.fns.items() if fn.queue and fn.api_visibility == "private")
    code, _ = post(url + "gradio_api/run/check_data", json.dumps({"data": [], "fn_index": private}).encode())
    assert code in (404, 422)
    c, token = api_session(url)  # the documented API joins the queue, as the page does, and still works
    report = c.predict("builtin", None, 32, api_name="/check_data")
    assert "background" in str(report)


def test_one_client_fills_no_more_than_its_share_of_the_queue(monkeypatch, tmp_path):
    """One client enqueued 136 events in 2 s and everyone else got "Queue is full". The queue's own push is
    given waiting events from one address, as a flood leaves it, and must turn that address away while
    another address, and another tab, still get in."""
    from gradio.data_classes import PredictBodyInternal
    from gradio.queueing import Event
    from starlette.requests import Request

    from segdemo.ui import build_demo, guard

    monkeypatch.setenv("SEGDEMO_TRUSTED_PROXY_HOPS", "1")  # behind a proxy (a Space): addresses from X-F-F
    monkeypatch.setattr(guard, "QUEUE_PER_ADDRESS", 3)
    monkeypatch.setattr(guard, "QUEUE_PER_SESSION", 2)
    jobs = JobManager(tmp_path / "runs", max_concurrent=1, reaper=False)
    demo = build_demo(jobs, cache_dir=tmp_path / "cache")
    queue = demo._queue
    fn = next(f for f in demo.fns.values() if f.api_name == "check_data")
    queue.create_event_queue_for_fn(fn)

    def request(addr: str) -> Request:
        headers = [(b"x-forwarded-for", addr.encode()), (b"content-type", b"application/json")]
        return Request(
            {
                "type": "http",
                "method": "POST",
                "path": "/gradio_api/queue/join",
                "headers": headers,
                "client": ("127.0.0.1", 5555),
                "query_string": b"",
            }
        )

    waiting = queue.event_queue_per_concurrency_id[fn.concurrency_id].queue
    for i in range(3):  # the flood so far: three events of 10.0.0.1 waiting for a slot
        waiting.append(Event(f"flood{i}", fn, request("10.0.0.1"), None))

    async def push(session: str, addr: str):
        body = PredictBodyInternal(
            session_hash=session, fn_index=fn._id, data=["builtin", None, 32], request=request(addr)
        )
        return await queue.push(body, request(addr), None)

    async def scenario():
        flood = await push("flood9", "10.0.0.1")
        other = await push("student", "10.0.0.2")
        tab1 = await push("student", "10.0.0.2")
        tab2 = await push("student", "10.0.0.2")  # this tab now has 2 waiting: its own cap
        return flood, other, tab1, tab2

    try:
        flood, other, tab1, tab2 = asyncio.run(scenario())
    finally:
        jobs.close()
    assert flood[0] is False and flood[2] == "queue_full" and "Your address already has 3" in flood[1]
    assert other[0] is True and tab1[0] is True
    assert tab2[0] is False and "This page already has 2" in tab2[1]


# -- downloads made once, the disk guarded ---------------------------------------------------------------------


def _files(*folders: Path) -> tuple[int, int]:
    n = size = 0
    for folder in folders:
        for p in Path(folder).rglob("*"):
            if p.is_file():
                n, size = n + 1, size + p.stat().st_size
    return n, size


def test_repeated_watches_gifs_and_redraws_do_not_grow_the_disk(server, finished):
    """Every live view or reload of a finished run wrote a fresh copy of its checkpoint (118 MiB a call for a
    width-64 model), the GIF was made again each time, and /redraw wrote a new picture for every float."""
    from gradio.utils import get_upload_folder

    url, jobs, demo = server
    c, token, run_id = finished
    places = (Path(get_upload_folder()), demo.segdemo_ctx.cache_dir)
    for _ in c.submit(token, run_id, api_name="/watch"):
        pass
    c.predict(token, run_id, api_name="/filmstrip_gif")
    before = _files(*places)
    for _ in range(4):
        for _ in c.submit(token, run_id, api_name="/watch"):
            pass
        c.predict(token, run_id, api_name="/filmstrip_gif")
    assert _files(*places) == before  # the same served files, not new copies

    example = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    example.save(Path(places[1]) / "probe.png")
    out = c.predict(
        token,
        f"run:{run_id}",
        None,
        [handle_file(str(Path(places[1]) / "probe.png"))],
        None,
        None,
        0.5,
        False,
        api_name="/predict",
    )
    view = out[-1]
    counted = _files(*places)[0]
    for a in np.linspace(0.0, 1.0, 60):  # 60 distinct floats: at most the slider's 21 steps make pictures
        c.predict(token, view, float(a) * 0.999, [0, 1, 2, 3], api_name="/redraw")
    assert _files(*places)[0] - counted <= 2 * 21


def test_the_disk_floor_refuses_new_work_with_a_sentence(server, monkeypatch):
    url, jobs, _ = server
    monkeypatch.setenv("SEGDEMO_MIN_FREE_DISK_MB", str(1 << 40))  # a floor above any disk: "nearly full"
    c, token = api_session(url)
    with pytest.raises(AppError, match="disk is nearly full"):
        c.predict(token, **tiny_train_args(), api_name="/train")
    code, text = _upload(url, [("a.png", b"x")])
    assert code == 429 and "disk is nearly full" in text


# -- uploads: files, not only bytes ------------------------------------------------------------------------------


def _upload(url: str, files: list[tuple[str, bytes]], addr: str | None = None) -> tuple[int, str]:
    boundary = "segdemoboundary"
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{n}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
        for n, data in files
    )
    body = parts + f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if addr:
        headers["X-Forwarded-For"] = addr
    return post(url + "gradio_api/upload", body, headers)


def test_many_tiny_files_are_refused_and_leave_nothing_behind(server):
    """gradio accepts 1000 files a request, each a folder and a file kept for hours: 20 requests added 40,000
    inodes in 13 s. One request may now hold FILES_PER_UPLOAD files; more is refused and nothing is kept."""
    from gradio.utils import get_upload_folder

    from segdemo.ui.guard import FILES_PER_UPLOAD

    url, _, _ = server
    before = _files(Path(get_upload_folder()))[0]
    code, text = _upload(url, [(f"f{i}.png", b"tiny") for i in range(FILES_PER_UPLOAD + 50)])
    assert code == 429 and f"at most {FILES_PER_UPLOAD} files" in text
    assert _files(Path(get_upload_folder()))[0] == before
    code, _ = _upload(url, [("fine.png", b"one file")])
    assert code == 200


def test_an_address_has_a_file_quota(tmp_path, monkeypatch):
    from segdemo.ui import guard

    monkeypatch.setattr(guard, "UPLOAD_FILES_PER_HOUR", 30)
    monkeypatch.setenv("SEGDEMO_TRUSTED_PROXY_HOPS", "1")
    with in_process_app(tmp_path) as (url, _, _):
        for _ in range(3):
            assert _upload(url, [(f"f{i}.png", b"x") for i in range(10)], addr="10.1.1.1")[0] == 200
        code, text = _upload(url, [("more.png", b"x")], addr="10.1.1.1")
        assert code == 429 and "30 files" in text
        assert _upload(url, [("other.png", b"x")], addr="10.1.1.2")[0] == 200  # another address is not charged


# -- weights files checked before torch reads them ---------------------------------------------------------------


def _bomb(path: Path, claimed: int = MAX_WEIGHTS_BYTES + (64 << 20)) -> Path:
    """A .pth-shaped zip whose one record unpacks to `claimed` bytes of zeros (a few hundred KB stored)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z, z.open("archive/data/0", "w", force_zip64=True) as f:
        chunk = bytes(8 << 20)
        for _ in range(claimed // len(chunk)):
            f.write(chunk)
    return path


def test_a_decompression_bomb_weights_file_is_refused_before_torch_reads_it(tmp_path):
    bomb = _bomb(tmp_path / "encoder.pth")
    assert bomb.stat().st_size < 4 << 20
    with pytest.raises(ConfigError, match="unpacks"):
        check_weights_file(bomb)
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ConfigError, match="zip format"):
        check_weights_file(legacy)
    good = tmp_path / "good.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7)}, good)
    check_weights_file(good)  # torch.save's own files pass
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(ConfigError, match="not a safetensors file"):
        check_weights_file(fake)


def test_a_weights_bomb_sent_to_train_is_a_sentence_and_costs_no_memory(server, tmp_path):
    import resource

    url, _, _ = server
    c, token = api_session(url)
    bomb = _bomb(tmp_path / "encoder.pth")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(AppError, match="unpacks"):
        c.predict(token, **tiny_train_args(encoder_weights=handle_file(str(bomb))), api_name="/train")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 300 << 10  # KB: far under the claim


# -- the planner's probe --------------------------------------------------------------------------------------------


def test_plans_for_any_image_size_share_a_few_probes(monkeypatch):
    """/plan ran a fresh timed probe (4.6 CPU-seconds) for each distinct image size: 291 keys against a
    32-entry cache. Probes are now priced per size class and class-count class, and a caller may be gated."""
    speedups._measure_cpu.cache_clear()
    p = recipes.BY_KEY["minute"]
    shapes = [recipes.DataShape(n_train=20, n_val=4, short=s, long=s + 40, rarest=0.2) for s in range(64, 300, 7)]
    for i, shape in enumerate(shapes):
        base = RunConfig()
        base.model.num_classes = 2 + i % 9
        recipes.plan(p, shape, base=base)
    # sizes 64..299 give 3 probe sides; 2..10 classes give 3 class buckets (2, 4, 8 or 16)
    assert speedups._measure_cpu.cache_info().misses <= 3 * 4
    gate = RateLimiter(1, 600, "new speed measurements for plans")
    fresh = recipes.DataShape(n_train=20, n_val=4, short=200, long=240, rarest=0.2)
    big = RunConfig()

    def plan(num_classes: int) -> None:  # as the app plans: each plan charged to the caller's address
        big.model.num_classes = num_classes
        with speedups.probes_charged_to(lambda: gate.hit("10.0.0.1")):
            recipes.plan(p, fresh, base=big)

    plan(200)  # a class bucket never probed yet: the first fresh probe is allowed
    plan(150)  # the same bucket (129-256 classes): cached, free
    with pytest.raises(LimitError, match="speed measurements"):
        plan(40)


def test_a_probe_never_changes_a_running_trainings_thread_count():
    speedups.hold_training_threads(1)
    try:
        with speedups.probe_threads(2):
            assert torch.get_num_threads() == 1  # measured with the training's count, left as it is
        assert torch.get_num_threads() == 1
    finally:
        speedups.release_training_threads()
    assert torch.get_num_threads() == speedups.PROCESS_THREADS


# -- shared lab PCs -------------------------------------------------------------------------------------------------


def test_run_history_is_off_and_a_forget_button_is_on_the_page(server):
    url, _, _ = server
    with urllib.request.urlopen(url + "config", timeout=30) as r:
        config = json.loads(r.read())
    assert config["run_history"] is False  # nothing (no owner token, no photo names) kept in localStorage
    assert any(comp.get("props", {}).get("elem_id") == "forget-browser" for comp in config["components"])


# -- runs that always end, crafted values that are sentences ------------------------------------------------------


class FakePanic(BaseException):
    """What pyo3 raises when Rust code panics (safetensors under memory pressure): not an Exception."""


def test_a_baseexception_in_a_run_ends_it_as_failed_and_frees_its_slots(tmp_path, monkeypatch):
    from segdemo.core import checkpoint

    real = checkpoint.save_checkpoint
    calls = {"n": 0}

    def panicking_save(*a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise FakePanic("called `Result::unwrap()` on an `Err` value")
        return real(*a, **k)

    monkeypatch.setattr(checkpoint, "save_checkpoint", panicking_save)
    jobs = JobManager(tmp_path / "runs", max_concurrent=1, reaper=False)
    try:
        owner = jobs.issue_owner_token()
        job = jobs.submit(owner, tiny_config(), client="10.0.0.1")
        job.thread.join(120)
        assert job.status == FAILED and "failed unexpectedly (FakePanic)" in job.message
        assert jobs.running_count() == 0
        again = jobs.submit(owner, tiny_config(), client="10.0.0.1")  # the owner's and address's slots are free
        again.thread.join(120)
        assert again.status == DONE
    finally:
        jobs.close()


def test_a_token_with_a_non_ascii_signature_is_simply_not_ours(server):
    tokens = OwnerTokens(b"k" * 32)
    assert tokens.valid("abc.\u00e9\u00e9") is False and tokens.valid("abc.\ud800x") is False
    url, _, _ = server
    c, _ = api_session(url)
    with pytest.raises(AppError, match="not recognised"):
        c.predict("abc.\u00e9\u00e9", "", api_name="/run_info")


def test_batch_one_with_a_one_pixel_bottom_is_refused_with_a_sentence():
    cfg = RunConfig()
    cfg.model.depth, cfg.data.image_size, cfg.train.batch_size = 5, 32, 1
    with pytest.raises(ConfigError, match="batch size of 2 or more"):
        cfg.validate()
    cfg.train.batch_size = 2
    cfg.validate()


def test_the_memory_budget_covers_the_resumable_save():
    from segdemo.core import budget

    cfg = RunConfig()
    cfg.model.width, cfg.data.image_size, cfg.train.batch_size = 64, 32, 2
    n = budget.parameter_count(cfg.model)
    assert budget.training_bytes(cfg) >= n * 4 * (budget.OPTIMISER_COPIES + 2 * budget.SAVED_COPIES)


def test_connections_held_open_are_capped_per_address(tmp_path, monkeypatch):
    """Gradio holds /heartbeat/<any id> open for as long as the client likes: one client opening thousands ran
    the server out of file descriptors. Each address may hold OPEN_CONNECTIONS_PER_ADDRESS of them."""
    import socket

    from segdemo.ui import guard

    monkeypatch.setattr(guard, "OPEN_CONNECTIONS_PER_ADDRESS", 5)
    monkeypatch.setenv("SEGDEMO_TRUSTED_PROXY_HOPS", "1")

    def open_heartbeat(port: int, addr: str) -> tuple[socket.socket, str]:
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(
            f"GET /gradio_api/heartbeat/made-up-{addr} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {addr}\r\n\r\n".encode()
        )
        head = s.recv(4096).decode("latin-1")
        if head.startswith("HTTP/1.1 429") and head.endswith("\r\n\r\n"):  # the body may come in a second read
            head += s.recv(4096).decode("latin-1")
        return s, head

    with in_process_app(tmp_path) as (url, _, _):
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        held = [open_heartbeat(port, "10.9.9.9") for _ in range(5)]
        try:
            assert all(first.startswith("HTTP/1.1 200") for _, first in held)
            s, first = open_heartbeat(port, "10.9.9.9")
            s.close()
            assert first.startswith("HTTP/1.1 429") and "connections to this server are open already" in first
            other, first = open_heartbeat(port, "10.9.9.10")  # another address is not turned away
            other.close()
            assert first.startswith("HTTP/1.1 200")
        finally:
            for s, _ in held:
                s.close()
        deadline = time.time() + 30  # closed connections give their slots back
        while time.time() < deadline:
            s, first = open_heartbeat(port, "10.9.9.9")
            s.close()
            if first.startswith("HTTP/1.1 200"):
                break
            time.sleep(0.5)
        assert first.startswith("HTTP/1.1 200")


def test_one_small_training_photo_trains_instead_of_failing_in_batchnorm(tmp_path):
    """One labelled photo to train on and a 1x1 deepest map: a batch of one failed in BatchNorm ("Expected more
    than 1 value per channel") as "failed unexpectedly"; the lone image now goes in twice."""
    from segdemo.training.trainer import Trainer

    cfg = tiny_config(epochs=1, batch_size=4)
    cfg.data.builtin_train, cfg.data.builtin_val, cfg.data.image_size = 1, 2, 32
    cfg.model.depth = 5
    end = Trainer(cfg, tmp_path / "run").run()
    assert type(end).__name__ == "Done" and end.epochs_done == 1, end
