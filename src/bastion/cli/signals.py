"""SIGTERM stops a command like Ctrl-C: what CI sends on cancel must also leave a finished,
truthful report. The exit code says which signal stopped the run (130 for SIGINT, 143 for SIGTERM)."""

from __future__ import annotations

import signal
from types import FrameType

_received: list[int] = []


def _on_term(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


def install() -> None:
    """Turn SIGTERM into KeyboardInterrupt (main thread only, as Python requires)."""
    signal.signal(signal.SIGTERM, _on_term)


def interrupt_exit_code() -> int:
    """128 + the signal that stopped the run: 143 after SIGTERM, else 130 (Ctrl-C)."""
    return 128 + (_received[-1] if _received else signal.SIGINT)
