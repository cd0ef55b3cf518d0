"""Encoder weights files, checked before torch reads a byte of their tensors.

`torch.load(weights_only=True)` stops code, not memory: a `.pth` is a zip whose records may claim
gigabytes that a few MB of deflated zeros produce, and torch allocates what the records say. So a `.pth`
must be a zip of torch.save's own layout whose records add up to at most MAX_WEIGHTS_BYTES once unpacked,
none packed more than MAX_RATIO times (torch.save stores tensors uncompressed, ratio 1), and a
`.safetensors` file must have a header of sane size that describes no more bytes than the file holds.
The app checks an upload the moment it arrives and the engine again before it loads the file.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

from segdemo.errors import ConfigError

MAX_WEIGHTS_BYTES = 512 << 20  # resnet34's ImageNet file is 83 MB
MAX_RATIO = 20  # unpacked / packed, per record: torch.save stores, it does not deflate
MAX_RECORDS = 10_000  # one per tensor plus a few; resnet34 has about 220
MAX_HEADER_BYTES = 4 << 20  # a safetensors header: the tensor table as JSON


def check_weights_file(path: str | Path, name: str = "the encoder") -> None:
    """Raise ConfigError, with a sentence that says what to give instead, unless `path` is a weights file
    whose tensors fit MAX_WEIGHTS_BYTES as stored and as unpacked."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no weights file at {p.name}")
    size = p.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise ConfigError(f"{p.name} is {size >> 20} MB; ImageNet weights for {name} are under 100 MB")
    if p.suffix.lower() == ".safetensors":
        _check_safetensors(p, size)
    else:
        _check_torch_zip(p)


def _check_torch_zip(p: Path) -> None:
    fix = "save it with torch.save(model.state_dict()) from a current PyTorch, or as .safetensors"
    if not zipfile.is_zipfile(p):
        raise ConfigError(f"{p.name} is not a weights file of torch.save's zip format; {fix}")
    try:
        with zipfile.ZipFile(p) as z:
            records = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ConfigError(f"{p.name} is a damaged zip ({type(e).__name__}); {fix}") from None
    if len(records) > MAX_RECORDS:
        raise ConfigError(f"{p.name} has {len(records)} records, more than a weights file has; {fix}")
    total = 0
    for r in records:
        total += r.file_size
        if r.file_size > MAX_RATIO * max(r.compress_size, 1) and r.file_size > 1 << 20:
            raise ConfigError(
                f"{p.name} holds a record that unpacks {r.file_size // max(r.compress_size, 1)} times larger "
                f"than it is stored (torch.save stores tensors unpacked): it is not a weights file; {fix}"
            )
    if total > MAX_WEIGHTS_BYTES:
        raise ConfigError(
            f"{p.name} unpacks to {total >> 20} MB, more than the {MAX_WEIGHTS_BYTES >> 20} MB ImageNet weights "
            f"need; {fix}"
        )


def _check_safetensors(p: Path, size: int) -> None:
    try:
        with p.open("rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 2 <= n <= min(MAX_HEADER_BYTES, size - 8):
                raise ValueError("header size")
            table = json.loads(f.read(n))
        ends = [v["data_offsets"][1] for k, v in table.items() if k != "__metadata__"]
    except (ValueError, KeyError, TypeError, IndexError, OSError, RecursionError):
        raise ConfigError(f"{p.name} is not a safetensors file (its header cannot be read)") from None
    if any(not isinstance(e, int) or e < 0 for e in ends) or max(ends, default=0) > size - 8 - n:
        raise ConfigError(f"{p.name} describes more tensor bytes than the file holds: it is damaged")
