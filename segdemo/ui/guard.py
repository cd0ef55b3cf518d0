"""An ASGI middleware in front of Gradio: size caps on request bodies and an upload quota per address.

Gradio caps each uploaded file (launch's max_file_size) but not how much one address uploads in all, and
not the size or nesting of JSON bodies (a 100 MB or deeply nested body costs the parser memory and time
before any handler runs). Uploads need no session in Gradio, so the quota is keyed by address.
"""

from __future__ import annotations

import json

from segdemo.limits import ByteQuota, LimitError, RateLimiter, client_address

MAX_BODY = 256 << 10  # JSON bodies: ours carry tokens, settings and file references, a few KB at most
UPLOAD_BYTES_PER_HOUR = 1 << 30  # per address: twenty 50 MB datasets
UPLOADS_PER_MINUTE = 300  # per address (gradio_client sends one request per file)


class RequestGuard:
    def __init__(
        self,
        app,
        max_body: int = MAX_BODY,
        upload_bytes_per_hour: int = UPLOAD_BYTES_PER_HOUR,
        uploads_per_minute: int = UPLOADS_PER_MINUTE,
    ):
        self.app = app
        self.max_body = max_body
        self.upload_quota = ByteQuota(upload_bytes_per_hour, 3600)
        self.upload_rate = RateLimiter(uploads_per_minute, 60, "uploads")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            length = int(headers.get("content-length", "-1"))
        except ValueError:
            return await _refuse(send, 400, "Content-Length is not a number.")
        if scope["path"].rstrip("/").endswith("/upload"):
            if length < 0:
                return await _refuse(send, 411, "Uploads need a Content-Length.")
            addr = client_address(headers, (scope.get("client") or (None,))[0])
            try:
                self.upload_rate.hit(addr)
                self.upload_quota.take(addr, length)
            except LimitError as e:
                await _drain(receive, length)  # a client still sending would see a broken pipe, not the reason
                return await _refuse(send, 429, str(e).capitalize() + ".")
            return await self.app(scope, receive, send)  # Gradio enforces the per-file cap (413) itself
        if length > self.max_body:
            return await _refuse(send, 413, f"Request body over {self.max_body // 1024} KB.")
        body, more = b"", True
        while more:  # read it all (it is small): chunked bodies get the same cap
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.max_body:
                return await _refuse(send, 413, f"Request body over {self.max_body // 1024} KB.")
        if body[:1] in (b"{", b"["):  # parsing <= 256 KB twice costs little; a RecursionError later costs a 500
            try:
                json.loads(body)
            except RecursionError:
                return await _refuse(send, 400, "Request body is nested too deeply.")
            except ValueError:
                pass  # not JSON after all: the route says so in its own words

        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


async def _drain(receive, limit: int) -> None:
    """Read and drop up to `limit` bytes of the request body."""
    seen = 0
    while seen <= limit:
        msg = await receive()
        if msg["type"] != "http.request":
            return
        seen += len(msg.get("body", b""))
        if not msg.get("more_body", False):
            return


async def _refuse(send, status: int, detail: str) -> None:
    data = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})
