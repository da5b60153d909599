"""Helpers for the hostile HTTP servers of the tests (standard library, 127.0.0.1)."""

from __future__ import annotations

import time
from http.server import BaseHTTPRequestHandler
from typing import Any, BinaryIO


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing and answers with one call."""

    def log_message(self, *args: Any) -> None:  # keep the test output quiet
        pass

    def _send(self, status: int, body: str | bytes, headers: dict[str, str] | None = None) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def trickle(wfile: BinaryIO, data: bytes, every: float = 0.2) -> None:
    """Send ``data`` one byte every ``every`` seconds (a client that hangs up ends it quietly):
    each read on the other side is quick, the whole answer is not."""
    try:
        for i in range(len(data)):
            wfile.write(data[i:i + 1])
            wfile.flush()
            time.sleep(every)
    except OSError:
        pass
