"""The doors in front of Gradio: an ASGI middleware (size caps on request bodies, an upload quota per
address in bytes and in files, a free-disk floor) and a per-client cap on the event queue.

Gradio caps each uploaded file (launch's max_file_size) but not how much one address uploads in all, nor how
many files (up to 1000 a request, each a folder and a file kept for hours), and not the size or nesting of
JSON bodies (a 100 MB or deeply nested body costs the parser memory and time before any handler runs).
Uploads need no session in Gradio, so their quotas are keyed by address, sized for a classroom behind one
router. Its queue caps the total of waiting events but not one client's share of it: one client could fill
it and turn everyone else away with "Queue is full".
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from gradio.utils import get_upload_folder

from segdemo.server.limits import ByteQuota, LimitError, RateLimiter, Slots, client_address, ensure_free_disk

MAX_BODY = 256 << 10  # JSON bodies: ours carry tokens, settings and file references, a few KB at most
UPLOAD_BYTES_PER_HOUR = int(os.environ.get("SEGDEMO_UPLOAD_MB_PER_HOUR") or 1024) << 20  # per address
UPLOADS_PER_MINUTE = int(os.environ.get("SEGDEMO_UPLOADS_PER_MINUTE") or 300)  # per address (gradio_client: one a file)
FILES_PER_UPLOAD = 200  # files in one upload request (the Label tab's photos come several at once)
UPLOAD_FILES_PER_HOUR = int(os.environ.get("SEGDEMO_UPLOAD_FILES_PER_HOUR") or 3000)  # per address: a class's
# Connections Gradio holds open (each page keeps a heartbeat and, while it waits for answers, an event stream):
# per address (a classroom of 30, a few tabs each) and in all, well under the process's file descriptors
OPEN_CONNECTIONS_PER_ADDRESS = int(os.environ.get("SEGDEMO_CONNECTIONS_PER_ADDRESS") or 300)
OPEN_CONNECTIONS_TOTAL = int(os.environ.get("SEGDEMO_CONNECTIONS_TOTAL") or 3000)
# Waiting events (not running ones): the whole queue, one address's share (a classroom behind one router is
# one address: 30 pages opening at once queue about 5 events each) and one browser tab's.
QUEUE_SIZE = int(os.environ.get("SEGDEMO_QUEUE_SIZE") or 512)
QUEUE_PER_ADDRESS = int(os.environ.get("SEGDEMO_QUEUE_PER_ADDRESS") or QUEUE_SIZE // 2)
QUEUE_PER_SESSION = int(os.environ.get("SEGDEMO_QUEUE_PER_SESSION") or 32)


class RequestGuard:
    def __init__(
        self,
        app: Any,
        max_body: int = MAX_BODY,
        upload_bytes_per_hour: int = UPLOAD_BYTES_PER_HOUR,
        uploads_per_minute: int = UPLOADS_PER_MINUTE,
        files_per_upload: int | None = None,
        upload_files_per_hour: int | None = None,
        factor: Callable[[str], int] | None = None,
    ) -> None:
        self.app = app
        # an address an instructor vouched for (a classroom's router, jobs.trust_address) gets the same
        # multiple of the upload caps as of its runs: 30 students painting send thousands of files an hour
        self.factor = factor or (lambda addr: 1)
        self.max_body = max_body
        self.upload_quota = ByteQuota(upload_bytes_per_hour, 3600)
        self.upload_rate = RateLimiter(uploads_per_minute, 60, "uploads")
        self.files_per_upload = files_per_upload or FILES_PER_UPLOAD
        self.connections = Slots(
            OPEN_CONNECTIONS_PER_ADDRESS,
            OPEN_CONNECTIONS_TOTAL,
            "connections to this server",
            (
                "everyone behind your router shares this address; close some tabs of this page and try again in "
                "a minute",
            ),
        )
        self.upload_files = ByteQuota(upload_files_per_hour or UPLOAD_FILES_PER_HOUR, 3600, unit="files")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        if scope["type"] == "http" and scope["method"] == "GET" and _is_long_lived(scope["path"]):
            return await self._held_open(scope, receive, send)
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
                ensure_free_disk(get_upload_folder())
                scale = self.factor(addr)
                self.upload_rate.hit(addr, factor=scale)
                self.upload_quota.take(addr, length, factor=scale)
            except LimitError as e:
                await _drain(receive, length)  # a client still sending would see a broken pipe, not the reason
                return await _refuse(send, 429, str(e).capitalize() + ".")
            # Gradio enforces the per-file cap (413) itself; the files are counted as they stream in
            parts = _PartCounter(
                headers.get("content-type", ""), self.files_per_upload, self.upload_files, addr, factor=scale
            )
            return await self.app(scope, parts.receive(receive), parts.send(send))
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

        async def replay() -> Any:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _held_open(self, scope: Any, receive: Any, send: Any) -> Any:
        """A connection Gradio keeps open (a page's heartbeat, an event stream) takes a slot of its address for as
        long as it lasts: Gradio holds a heartbeat open for any made-up session id, so without a cap one client
        could open connections until the server runs out of file descriptors."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        addr = client_address(headers, (scope.get("client") or (None,))[0])
        try:
            held = self.connections.hold(addr)
        except LimitError as e:
            return await _refuse(send, 429, str(e).capitalize() + ".")
        with held:
            return await self.app(scope, receive, send)


def _is_long_lived(path: str) -> bool:
    return "/heartbeat/" in path or path.rstrip("/").endswith("/queue/data")


class _PartCounter:
    """Counts the files of a multipart upload as its bytes stream past, against a cap per request and the
    address's file quota. Over either, the next read raises python_multipart's parse error, on which Gradio
    deletes the parts it had written; the response Gradio then sends is replaced by the reason (429)."""

    def __init__(self, content_type: str, per_request: int, quota: ByteQuota, addr: str, factor: int = 1) -> None:
        self.factor = factor
        b = content_type.partition("boundary=")[2].split(";")[0].strip().strip('"')
        self.delimiter = b"--" + b.encode("latin-1", "replace") if b else b""
        self.per_request, self.quota, self.addr = per_request, quota, addr
        self.seen, self.tail = 0, b""
        self.refusal: str | None = None

    def receive(self, receive: Any) -> Any:
        async def counted() -> Any:
            msg = await receive()
            if self.delimiter and msg["type"] == "http.request":
                self._count(msg.get("body", b""))
            return msg

        return counted

    def _count(self, chunk: bytes) -> None:
        from python_multipart.exceptions import MultipartParseError

        data = self.tail + chunk
        n = data.count(self.delimiter)
        self.tail = data[-(len(self.delimiter) - 1) :] if len(self.delimiter) > 1 else b""
        # each delimiter after the first ends one file (the last one closes the body)
        new = n - (self.seen == 0 and n > 0)
        self.seen += n
        try:
            if self.seen - 1 > self.per_request:
                raise LimitError(f"one upload may hold at most {self.per_request} files; send fewer at a time")
            if new > 0:
                self.quota.take(self.addr, new, factor=self.factor)
        except LimitError as e:
            self.refusal = str(e).capitalize() + "."
            raise MultipartParseError(self.refusal) from None

    def send(self, send: Any) -> Any:
        async def replaced(msg: Any) -> Any:
            if self.refusal is None:
                return await send(msg)
            if msg["type"] == "http.response.start":
                await _refuse(send, 429, self.refusal)

        return replaced


async def _drain(receive: Any, limit: int) -> None:
    """Read and drop up to `limit` bytes of the request body."""
    seen = 0
    while seen <= limit:
        msg = await receive()
        if msg["type"] != "http.request":
            return
        seen += len(msg.get("body", b""))
        if not msg.get("more_body", False):
            return


async def _refuse(send: Any, status: int, detail: str) -> None:
    data = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})


def cap_queue_per_client(demo: Any) -> None:
    """Refuse a new event when its address already has QUEUE_PER_ADDRESS events waiting, or its browser tab
    QUEUE_PER_SESSION: one client can fill no more than its share of the queue. Gradio has no setting for this,
    so its queue's `push` is wrapped (gradio 6.31: `Queue.push(body, request, username)` returning
    (ok, event id or message, state); tests/test_server_security.py fails if that changes)."""
    queue = demo._queue
    push = queue.push

    async def capped_push(body: Any, request: Any, username: Any) -> Any:
        addr = _address_of(request)
        waiting = [e for q in queue.event_queue_per_concurrency_id.values() for e in q.queue]
        mine = sum(1 for e in waiting if _address_of(e.request) == addr)
        tab = sum(1 for e in waiting if body.session_hash and e.session_hash == body.session_hash)
        if mine >= QUEUE_PER_ADDRESS or tab >= QUEUE_PER_SESSION:
            who, n = ("This page", tab) if tab >= QUEUE_PER_SESSION else ("Your address", mine)
            return (
                False,
                f"{who} already has {n} requests waiting in the server's queue, the most one client may have; "
                "wait for them to finish, then try again.",
                "queue_full",
            )
        return await push(body, request, username)

    queue.push = capped_push


def _address_of(request: Any) -> str:
    """The limits' address of a queued event's request (computed once per event)."""
    cached = getattr(request, "_segdemo_address", None)
    if cached is None:
        headers = {k.lower(): v for k, v in request.headers.items()} if request is not None else {}
        peer = getattr(getattr(request, "client", None), "host", None)
        cached = client_address(headers, peer)
        try:
            request._segdemo_address = cached
        except AttributeError:
            pass
    return cached
