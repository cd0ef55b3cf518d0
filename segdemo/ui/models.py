"""The models a browser may use: the choices (shipped, its finished runs, an upload), the checkpoint file behind
a choice, ONNX take-home bundles, and the one-run-at-a-time rule a Train click meets before any work."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import gradio as gr

from segdemo.server.jobs import Job, JobManager
from segdemo.ui.context import AppContext
from segdemo.ui.errors import user_error
from segdemo.ui.words import esc, safe_stem


def run_label(job: Job) -> str:
    when = time.strftime("%H:%M", time.localtime(job.created))
    miou = getattr(job.result, "best_miou", None)  # a run that ended well has one
    best = f"val mIoU {miou:.3f}" if miou is not None else "no checkpoint"
    return f"Your run from {when} ({job.status}, {best})"


def model_choices(ctx: AppContext, owner: str | None) -> list[tuple[str, str]]:
    """The shipped model, this browser's finished runs (newest first) and an uploaded file."""
    shipped = (
        "Shipped model: U-Net on the built-in shapes"
        if ctx.default_checkpoint.is_file()
        else "Shipped model (not installed on this server)"
    )
    choices = [(shipped, "default")]
    if owner and ctx.jobs.valid_owner_token(owner):
        for job in reversed(ctx.jobs.jobs_for(owner)):
            if job.best_checkpoint is not None:
                choices.append((run_label(job), f"run:{job.id}"))
    choices.append(("A checkpoint file I upload (.safetensors)", "upload"))
    return choices


def uploaded_checkpoint(ckpt_file: Any) -> Path:
    """An uploaded checkpoint's path: one .safetensors file (a pickle could run code); gr.Error otherwise."""
    if not isinstance(ckpt_file, str):
        raise gr.Error("Upload the checkpoint as one file.")
    p = Path(ckpt_file)
    if p.suffix.lower() != ".safetensors":
        raise gr.Error(
            f"{esc(p.name, quote=False)} is not a .safetensors file. Upload a checkpoint saved by segdemo "
            "(.pt/.pth files are refused: loading them can run code)."
        )
    return p


def checkpoint_for(ctx: AppContext, token: Any, model: str | None, ckpt_file: Any) -> Path:
    """The checkpoint file for a model choice; gr.Error with what to do when there is none."""
    if model == "default" or model is None:
        if not ctx.default_checkpoint.is_file():
            raise gr.Error(
                "The shipped model is not installed on this server. Train a run in the Train tab "
                "or upload a .safetensors checkpoint, then choose it under Model."
            )
        return ctx.default_checkpoint
    if model == "upload":
        if not ckpt_file:
            raise gr.Error("Upload a .safetensors checkpoint first, or choose another model.")
        return uploaded_checkpoint(ckpt_file)
    if isinstance(model, str) and model.startswith("run:"):
        job = ctx.jobs.get(ctx.owner(token), model[4:])
        best = job.best_checkpoint
        if best is None:
            if job.is_active:
                raise gr.Error(
                    "That run is still training; its checkpoint appears here when it ends "
                    "(or press Stop in the Train tab)."
                )
            raise gr.Error("That run ended before its first epoch finished, so it has no checkpoint.")
        return best
    raise gr.Error("Choose a model from the list.")


def export_onnx_zip(ctx: AppContext, checkpoint: Path, name: str | None = None) -> Path:
    """A checkpoint as a take-home bundle (ONNX model, meta.json, predict_onnx.py, README.md, requirements.txt) in
    one zip named after the run (`segdemo-<name>-onnx.zip`), in a scratch folder Gradio may serve."""
    from segdemo.export.exporter import ExportError, export_zip

    st = checkpoint.stat()
    stem = safe_stem(name or checkpoint.stem) or "model"
    zip_name = f"segdemo-{stem}-onnx.zip"
    try:  # exported once per checkpoint file (and version): a second click serves the same zip
        return Path(
            ctx.served(
                ("onnx", str(checkpoint.resolve()), st.st_size, st.st_mtime_ns),
                zip_name,
                lambda dst: export_zip(checkpoint, dst, "onnx"),
            )
        )
    except ExportError as e:  # the onnx package missing, or an export that disagrees with PyTorch
        raise user_error(str(e)) from None


def refuse_a_second_run(jobs: JobManager, owner: str) -> None:
    """One run per browser: said before the data is checked (jobs.submit refuses a second one too, later)."""
    if jobs.active_for(owner) is not None:
        raise gr.Error(
            "You already have a run in progress (Train was pressed twice?). Press Stop, or wait "
            "for it to finish, before starting another."
        )
