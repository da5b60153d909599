"""Helpers for the hostile HTTP servers of the tests (standard library, 127.0.0.1)."""

from __future__ import annotations

import time
from typing import BinaryIO


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
