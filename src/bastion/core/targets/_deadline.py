"""One deadline for a whole HTTP request: connecting, sending, the answer's headers and its body.

httpx's ``timeout`` bounds each network operation, so a server that sends one byte every 0.2 s
never times out. Here every read and write of the connection gets at most the time left before
the deadline of the request in progress on this thread (:func:`deadline`), and raises httpcore's
``ReadTimeout`` (httpx's ``ReadTimeout`` for the caller) once it has passed. The clock reaches
the sockets through httpcore's public ``NetworkBackend`` interface, plugged into the pool of an
``httpx.HTTPTransport``; proxies from the environment are kept.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)
_local = threading.local()


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Bound every network operation of this thread for ``seconds`` from now."""
    _local.at = time.monotonic() + seconds
    try:
        yield
    finally:
        _local.at = None


def _left(timeout: float | None) -> float | None:
    at = getattr(_local, "at", None)
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        import httpcore

        raise httpcore.ReadTimeout("the request's deadline has passed")
    return left if timeout is None else min(timeout, left)


def _stream_class() -> type:
    import httpcore

    class DeadlineStream(httpcore.NetworkStream):
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            return self._inner.read(max_bytes, _left(timeout))  # type: ignore[no-any-return]

        def write(self, buffer: bytes, timeout: float | None = None) -> None:
            self._inner.write(buffer, _left(timeout))

        def close(self) -> None:
            self._inner.close()

        def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                      timeout: float | None = None) -> Any:
            return DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, _left(timeout)))

        def get_extra_info(self, info: str) -> Any:
            return self._inner.get_extra_info(info)

    return DeadlineStream


def _backend(inner: Any) -> Any:
    import httpcore

    stream = _stream_class()

    class DeadlineBackend(httpcore.NetworkBackend):
        def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                        socket_options: Any = None) -> Any:
            return stream(inner.connect_tcp(host, port, _left(timeout), local_address, socket_options))

        def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> Any:
            return stream(inner.connect_unix_socket(path, _left(timeout), socket_options))

        def sleep(self, seconds: float) -> None:
            inner.sleep(seconds)

    return DeadlineBackend()


def client(url: str, timeout: float) -> Any:
    """An ``httpx.Client`` for ``url`` whose connections obey :func:`deadline` (the environment's
    proxy for that URL, if any, is used as httpx would)."""
    import httpx

    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = None if urllib.request.proxy_bypass(parts.hostname or "") else proxies.get(parts.scheme)
    transport = httpx.HTTPTransport(proxy=proxy)
    pool = getattr(transport, "_pool", None)
    if pool is not None and hasattr(pool, "_network_backend"):
        pool._network_backend = _backend(pool._network_backend)
    else:  # pragma: no cover - an httpx/httpcore release that moved these
        log.warning("this httpx version does not let bastion bound the whole request: a server trickling its "
                    "headers is bounded only by each read's timeout (bodies are still cut at the deadline)")
    return httpx.Client(timeout=timeout, transport=transport)
