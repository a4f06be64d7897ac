"""The HTTP port: ``/metrics`` and KServe's ``/v2/health/live`` and ``/v2/health/ready``.

A deliberately tiny HTTP/1.1 responder on asyncio streams: three GET routes do not justify
a web framework in the serving process. Requests are bounded (8 KiB head, 5 s to send it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

MAX_HEAD_BYTES = 8192


class HttpEndpoint:
    def __init__(
        self, *, metrics: Callable[[], bytes], live: Callable[[], bool],
        ready: Callable[[], bool],
    ) -> None:
        self._metrics = metrics
        self._live = live
        self._ready = ready
        self._server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(
            self._handle, host, port, reuse_port=False, limit=MAX_HEAD_BYTES
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _route(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method != "GET":
            return 405, "text/plain", b"method not allowed\n"
        path = path.split("?", 1)[0]
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", self._metrics()
        if path == "/v2/health/live":
            return (200, "application/json", b'{"live": true}') if self._live() else (
                503, "application/json", b'{"live": false}')
        if path == "/v2/health/ready":
            return (200, "application/json", b'{"ready": true}') if self._ready() else (
                503, "application/json", b'{"ready": false}')
        return 404, "text/plain", b"not found\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split(" ")
            status, ctype, body = (
                self._route(parts[0], parts[1]) if len(parts) == 3 else
                (400, "text/plain", b"bad request\n")
            )
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            status, ctype, body = 400, "text/plain", b"bad request\n"
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found",
                  405: "Method Not Allowed", 503: "Service Unavailable"}[status]
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
