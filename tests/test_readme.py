"""The README's file map stays true: every file in the repository has its line, every line a file."""

import fnmatch
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tracked() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [f for f in out.stdout.splitlines() if f]


def test_every_tracked_file_has_a_line_and_every_line_a_file():
    block = (ROOT / "README.md").read_text().split("## File map", 1)[1].split("```", 2)[1]
    patterns = []
    for line in block.splitlines():
        if not line.strip() or line.startswith(("<!--", "# ")):  # a blank line, a comment, a group heading
            continue
        names = re.split(r",\s*", line.split("  ")[0].strip())  # "a/*.png, masks/*.png  description"
        folder = names[0].rsplit("/", 1)[0] + "/" if "/" in names[0] else ""
        patterns += [names[0]] + [n if "/" in n and n.startswith(folder) else folder + n for n in names[1:]]
    twice = sorted({p for p in patterns if patterns.count(p) > 1})
    assert not twice, f"the README's file map names these more than once: {twice}"
    files = _tracked()
    unmapped = [f for f in files if not any(fnmatch.fnmatchcase(f, p) for p in patterns)]
    assert not unmapped, f"add these to the README's file map: {unmapped}"
    stale = [p for p in patterns if not any(fnmatch.fnmatchcase(f, p) for f in files)]
    assert not stale, f"the README's file map names files that are not in the repository: {stale}"
