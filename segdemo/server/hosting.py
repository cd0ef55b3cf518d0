"""Which address the app listens on: this machine only, unless the host says otherwise.

A laptop at a workshop should not serve every machine on the Wi-Fi, so the default is 127.0.0.1. It is
0.0.0.0 on a Hugging Face Space (which sets SPACE_ID, and SYSTEM=spaces), where the Space's proxy must reach
the app; GRADIO_SERVER_NAME, or `segdemo app --host`, overrides both. Exposing the app beyond loopback
anywhere else prints a warning.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping

LOCAL = "127.0.0.1"
EVERYWHERE = "0.0.0.0"


def on_space(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return bool(env.get("SPACE_ID")) or env.get("SYSTEM") == "spaces"


def default_host(env: Mapping[str, str] | None = None) -> str:
    """GRADIO_SERVER_NAME if set, else 0.0.0.0 on a Hugging Face Space, else 127.0.0.1."""
    env = os.environ if env is None else env
    return env.get("GRADIO_SERVER_NAME") or (EVERYWHERE if on_space(env) else LOCAL)


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name or an interface's address: reachable from elsewhere


def exposure_warning(host: str, share: bool = False, env: Mapping[str, str] | None = None) -> str | None:
    """What to tell the person starting the app when others can reach it; None when only they can, or on a
    Space, where being reachable is the point."""
    if on_space(env):
        return None
    if share:
        return (
            "warning: share=True opens a public gradio.live link; anyone who has it can use this app "
            "(train on this machine, upload files) from the internet"
        )
    if not is_loopback(host):
        return (
            f"warning: listening on {host}: any machine that can reach this one (the same Wi-Fi, say) can use "
            f"this app, train on this machine and upload files; leave out --host and GRADIO_SERVER_NAME to "
            f"keep it to this machine ({LOCAL})"
        )
    return None


def warn_if_exposed(host: str, share: bool = False) -> None:
    msg = exposure_warning(host, share)
    if msg:
        print(msg, file=sys.stderr, flush=True)
