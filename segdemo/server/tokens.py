"""Owner tokens: the server signs the tokens it hands to browsers, so it can refuse made-up ones.

A token is 192 random bits plus an HMAC with a server secret (a client that picked "abc" could otherwise
share runs with another that did). The secret comes from SEGDEMO_SECRET, else a `.secret` file in the
runs folder (so tokens outlive a restart when the runs do), else lives in memory only. Runs are
registered under hash_owner(token), never the token itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

from segdemo.atomic import replace_file
from segdemo.errors import JobError


def hash_owner(owner: str) -> str:
    """What a run is registered under (in memory and in job.json): a SHA-256 of the owner string."""
    if not isinstance(owner, str) or not owner:
        raise JobError("This browser session has no id yet; reload the page")
    return hashlib.sha256(owner.encode()).hexdigest()


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class OwnerTokens:
    """Issues and checks signed owner tokens; derives other per-server keys from the same secret."""

    def __init__(self, secret: bytes | None = None, folder: str | Path | None = None):
        self._secret = secret or load_secret(folder)

    def issue(self) -> str:
        """A fresh owner token: 192 random bits plus an HMAC, so only this server's tokens are accepted."""
        nonce = _b64(secrets.token_bytes(24))
        return f"{nonce}.{self._sign(nonce)}"

    def valid(self, token: Any) -> bool:
        # ours are ASCII: anything else (compare_digest raises TypeError on non-ASCII str) is simply not ours
        if not isinstance(token, str) or not token.isascii() or token.count(".") != 1 or len(token) > 200:
            return False
        nonce, sig = token.split(".")
        return bool(nonce) and hmac.compare_digest(sig, self._sign(nonce))

    def derive(self, purpose: bytes) -> str:
        """A key for another use (e.g. the browser state's), stable as long as the secret is."""
        return hmac.new(self._secret, purpose, hashlib.sha256).hexdigest()[:32]

    def _sign(self, nonce: str) -> str:
        return _b64(hmac.new(self._secret, nonce.encode(), hashlib.sha256).digest()[:18])


def load_secret(folder: str | Path | None) -> bytes:
    """SEGDEMO_SECRET; else `folder/.secret` (made once, private to this user); else a fresh one in memory."""
    env = os.environ.get("SEGDEMO_SECRET")
    if env:
        return env.encode()
    if folder is None:
        return secrets.token_bytes(32)
    path = Path(folder) / ".secret"
    try:
        if path.is_file():
            s = path.read_bytes()
            if len(s) >= 32:
                return s
        s = secrets.token_bytes(32)
        replace_file(path, s)  # mkstemp's 0600: the secret is this user's alone
        return s
    except OSError:
        return secrets.token_bytes(32)
