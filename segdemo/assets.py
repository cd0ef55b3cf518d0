"""Where the shipped checkpoint and the example images are: one function for the app, the CLI and the tests.

An installed wheel carries them as package data in segdemo/assets/ (pyproject.toml maps the repository's
checkpoints/shapes_unet.safetensors and examples/ there); a source checkout, or an editable install of one,
has them at the repository root. Never the current directory: `segdemo app` works from anywhere.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SHIPPED_CHECKPOINT = "checkpoints/shapes_unet.safetensors"
EXAMPLES = "examples"


def asset(name: str) -> Path:
    """The path of a shipped file or folder, e.g. asset(SHIPPED_CHECKPOINT) or asset(EXAMPLES).

    Package data first, then the source tree. The path may not exist (a checkout without the checkpoint):
    callers check, as they do for any file."""
    packaged = Path(str(resources.files("segdemo").joinpath("assets", name)))
    if packaged.exists():
        return packaged
    return Path(__file__).resolve().parents[1] / name
