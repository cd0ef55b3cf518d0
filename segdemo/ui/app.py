"""The Gradio app (imported as segdemo.ui): `build_demo()` assembles the Train, Predict, Compare and Label tabs;
`launch()` starts it safely.

Widgets and wiring only: training, prediction, checks and checkpoints all live in the engine.

API (gradio_client), see README: `/session` -> owner token; `/check_data`; `/train` -> run id;
`/watch` (streams); `/stop`; `/run_info` (JSON); `/filmstrip_gif`; `/predict`; `/redraw` (Predict's pictures again, no
model); `/my_runs`, `/compare`, `/ablate` (ui/compare_tab.py); the Label tab's `/label_*` (ui/label_tab.py);
the instructor's `/instructor_*`, each needing the instructor key (ui/instructor_tab.py).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import gradio as gr  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from segdemo import logs  # noqa: E402
from segdemo.server.hosting import default_host, warn_if_exposed  # noqa: E402
from segdemo.server.jobs import JobManager  # noqa: E402
from segdemo.ui.compare_tab import CompareTab  # noqa: E402
from segdemo.ui.context import EXAMPLES_DIR, AppContext  # noqa: E402
from segdemo.ui.guard import QUEUE_SIZE, cap_queue_per_client  # noqa: E402
from segdemo.ui.instructor_tab import InstructorTab  # noqa: E402
from segdemo.ui.label_tab import LabelTab  # noqa: E402
from segdemo.ui.picture_cache import write_pictures_to_cache_atomically  # noqa: E402
from segdemo.ui.predict_tab import PredictTab  # noqa: E402
from segdemo.ui.train_tab import TrainTab  # noqa: E402

__all__ = ["build_demo", "launch", "CSS"]

FORGET_CONFIRM = (
    "Forget this browser? Your runs and labelled photos will no longer open from this browser (use this on a "
    "shared computer before you leave)."
)

CSS = """
.segdemo-legend { font-size: 0.95em; }
#run-status { min-height: 3.2em; }
/* an empty download box need not be as tall as an upload area */
#best-checkpoint .empty, #mask-file .empty { min-height: 3em !important; height: 3em !important; }
#best-checkpoint .empty .icon, #mask-file .empty .icon { height: 1.6em; }
/* masks are class maps: show their pixels crisp when the browser enlarges them */
#out-slider img, #out-color img, #error-map img, #filmstrip img, #worst-images img, #prob-maps img {
  image-rendering: pixelated;
}
/* a brush stroke that runs off the canvas selects no page text */
#label-editor, #label-editor * { user-select: none; -webkit-user-select: none; }
/* an empty table's header keeps its words whole ("class", not "clas / s") */
#iou-table th, #predict-table th { min-width: 5.5em; }
/* small pictures (the built-in data is 128 px) fill their boxes instead of sitting in a corner */
#out-color img, #error-map img {
  width: 100%; height: 100%; object-fit: contain;
}
"""


def build_demo(
    jobs: JobManager | None = None,
    *,
    cache_dir: Any = None,
    default_checkpoint: Any = None,
    concurrency: int | None = None,
) -> gr.Blocks:
    """The whole app. `jobs` defaults to JobManager.from_env() (SEGDEMO_MAX_CONCURRENT, SEGDEMO_RUN_TTL_S)."""
    write_pictures_to_cache_atomically()
    if jobs is None:  # the server's own run store: what it finds at start (runs resuming after a restart) is logged
        logs.log_to_stderr(logging.INFO)
    ctx = AppContext(jobs, cache_dir=cache_dir, default_checkpoint=default_checkpoint)
    # Gradio's own cache (uploads, pictures sent to browsers) is swept hourly of files older than 2 h.
    with gr.Blocks(title="segdemo: train a U-Net and see what it learned", delete_cache=(3600, 7200)) as demo:
        token = gr.BrowserState(None, storage_key="segdemo-owner", secret=ctx.browser_secret)
        persist = f" Your runs are kept for {ctx.jobs.ttl_s / 3600:g} h" + (
            "." if ctx.jobs.runs_persist else " and do not survive a server restart."
        )
        with gr.Row(equal_height=True):
            gr.Markdown(
                "# segdemo: train a U-Net, live\nSemantic segmentation gives **every pixel** a class. Train a "
                "small U-Net here and watch what it learns, then try it on new images." + persist
            )
            with gr.Column(scale=0, min_width=190):  # a column keeps the button its own height, not the row's
                forget = gr.Button("Forget this browser", size="sm", variant="secondary", elem_id="forget-browser")
                gr.Markdown("<small>on a shared computer, before you leave</small>", elem_id="forget-hint")
        with gr.Tabs() as tabs:
            with gr.Tab("Train", id="train"):
                train = TrainTab(ctx, token)
            with gr.Tab("Predict", id="predict") as predict_tab:
                predict = PredictTab(ctx, token)
            with gr.Tab("Compare", id="compare") as compare_tab:
                compare = CompareTab(ctx, token)
            with gr.Tab("Label", id="label"):
                label = LabelTab(ctx, token)
            with gr.Tab("Instructor", id="instructor"):
                instructor = InstructorTab(ctx, label.store)
        train.wire(demo, predict.model)
        predict.wire(demo, predict_tab)
        compare.wire(demo, compare_tab, train, predict.model)
        label.wire(demo, tabs, train)
        instructor.wire()
        session = demo.load(ctx.ensure_token, token, token, api_name="session", queue=False)
        # Train stays disabled until the page has its session: a click before it would only meet an error
        session.success(train.ready, None, train.train_btn, api_visibility="private", queue=False)
        session.success(
            train.reattach,
            token,
            train.reattach_outputs,
            api_visibility="private",
            concurrency_limit=None,
            show_progress="hidden",
        )
        # a shared lab PC: the next student must not reach this one's runs through the token kept in the browser
        forget.click(
            ctx.forget_browser,
            token,
            token,
            js=f"(t) => {{ if (!confirm({FORGET_CONFIRM!r})) throw new Error('kept'); return t; }}",
            api_visibility="private",
            queue=False,
        ).then(None, js="() => setTimeout(() => window.location.reload(), 300)")
    limit = concurrency or int(os.environ.get("SEGDEMO_UI_CONCURRENCY", "2"))
    # api_open=False: /gradio_api/run/<api> no longer calls queued functions around the queue (their
    # concurrency limits, the queue's size and the per-client cap below hold for every door); gradio_client
    # joins the queue as the page does, so the documented API works as before.
    demo.queue(default_concurrency_limit=limit, max_size=QUEUE_SIZE, api_open=False)
    cap_queue_per_client(demo)
    demo.segdemo_ctx = ctx  # for tests and the launcher
    return demo


def launch(demo: gr.Blocks, **kw: Any) -> tuple[FastAPI, str, str]:
    """demo.launch with this app's defaults: 127.0.0.1 unless GRADIO_SERVER_NAME or a Hugging Face Space says
    otherwise (segdemo.server.hosting), port from PORT, 50 MB uploads, only the examples folder readable, no
    tracebacks on the page, capped request bodies and an upload quota per address (ui/guard.py), files private
    to the server's user. Keyword arguments override; listening beyond loopback prints a warning."""
    from starlette.middleware import Middleware

    from segdemo.ui.guard import RequestGuard

    os.umask(0o077)  # run folders, checkpoints and caches are the server's alone, not every local user's
    opts: dict[str, Any] = dict(
        server_name=default_host(),
        server_port=int(os.environ.get("PORT") or os.environ.get("GRADIO_SERVER_PORT") or 7860),
        max_file_size="50mb",
        allowed_paths=[str(EXAMPLES_DIR)] if EXAMPLES_DIR.is_dir() else [],
        show_error=False,
        enable_monitoring=False,  # gradio otherwise hands a monitoring URL to anyone who asks /monitoring
        css=CSS,
        footer_links=["api"],
        # gradio's run history keeps every call (the owner token among its inputs, photo names, file URLs) in
        # the browser's localStorage: on a shared lab PC the next student could replay them. Off, it is
        # also wiped from browsers that kept one.
        run_history=False,
        # body caps, upload quota per address (an instructor-trusted address gets the same multiple as its runs)
        app_kwargs={"middleware": [Middleware(RequestGuard, factor=_address_factor(demo))]},
    )
    opts.update(kw)
    logs.log_to_stderr(logging.INFO)  # the server's log: engine records and the tracebacks of bugs
    warn_if_exposed(opts["server_name"] or default_host(), bool(opts.get("share")))
    from segdemo.training.trainer import warm_up

    threading.Thread(target=warm_up, name="segdemo-warm-up", daemon=True).start()
    return demo.launch(**opts)


def _address_factor(demo: gr.Blocks) -> Callable[[str], int]:
    """The upload caps' multiple for an address: its job manager's (instructor trust), 1 without one."""
    ctx = getattr(demo, "segdemo_ctx", None)
    return ctx.jobs.address_factor if ctx is not None else (lambda addr: 1)
