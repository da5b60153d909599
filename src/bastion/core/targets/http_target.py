"""A model behind a JSON prediction API, attacked the way a real adversary reaches it.

The request body is a JSON template holding the placeholder ``"$inputs"`` where the batch goes
(nested lists); the response holds the probabilities (or only the labels) at a dotted path
(``outputs.probabilities``, ``predictions.*.label``; ``*`` maps over a list, integers index one).
The auth header value is read from an environment variable and never logged, described, reported
or put in an error message (see :mod:`bastion.core.redact`). Batching, concurrent requests, a
timeout for each whole request, a cap on the answer's size, retries with jittered exponential
backoff on 429/5xx (honouring ``Retry-After``), a client-side rate limit, the Target's hard query
budget, and a log of every request (``request_log``) with its summary (``query_log``) for reports.
"""

from __future__ import annotations

import contextvars
import copy
import email.utils
import json
import logging
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import numpy as np

from bastion.core.redact import install_log_redaction, redact, redact_snippet, redact_url, register_secret
from bastion.core.run import log_request, log_retry
from bastion.core.spec import InputSpec
from bastion.core.targets import _deadline
from bastion.core.targets.base import Target, TargetUnavailable, looks_like_probabilities
from bastion.errors import UsageError, require

log = logging.getLogger(__name__)

PLACEHOLDER = "$inputs"
MAX_LOG = 100_000  # request records kept in memory
MAX_RESPONSE_BYTES = 16 * 2**20  # default cap on one answer: far above 64 rows of 1,000 scores


class EndpointError(TargetUnavailable):
    """The prediction API failed: unreachable, timing out, or answering with an error status."""


class EndpointUnreachable(EndpointError):
    """No answer from the endpoint (connection refused, DNS failure, timeout) after every retry."""


class MalformedResponse(EndpointError):
    """The endpoint answered, but not with what the response path says it should."""


class ResponseTooLarge(MalformedResponse):
    """The endpoint's answer is larger than ``max_response_bytes``."""


AUTH_LIKE = re.compile(r"auth|key|token|secret|passw|pwd|cookie|session|credential|sig|code", re.IGNORECASE)


class HttpTarget(Target):
    """A classifier served over HTTP with a JSON API (black box; ``label_only`` if it returns labels).

    Parameters
    ----------
    url: the prediction endpoint (POST).
    classes: class labels, in the order of the probability columns.
    input_spec: shape and bounds of one input.
    request_template: JSON body (dict or JSON string) with ``"$inputs"`` where the batch goes;
        default ``{"inputs": "$inputs"}``.
    probabilities_path / label_path: dotted path to the probabilities (n × k) or the labels (n) in
        the response; exactly one. With ``label_path`` the target is label-only: predict_proba
        returns one-hot rows and only decision-based attacks are meaningful.
    auth_env: name of the environment variable holding the auth header value (read at start, never
        logged); ``auth_header`` the header name (default ``Authorization``); ``auth_prefix`` e.g.
        ``"Bearer "``.
    batch_size: inputs per request; timeout: seconds for a whole request (connect, send, wait,
        read the answer); retries: extra attempts on 429/5xx/transport errors; backoff: first wait
        in seconds (doubling, capped at ``max_backoff``, less up to ``jitter`` of it at random);
        a ``Retry-After`` is honoured up to ``max_backoff`` and beyond it stops with an error;
        rate_limit: most requests per second (None: no limit); max_concurrency: requests in flight
        at once (batches of one call are sent in parallel, still under ``rate_limit``);
        max_response_bytes: largest answer accepted (``ResponseTooLarge`` beyond it).
    query_budget: hard limit on inputs sent for the whole run (QueryBudgetExceeded beyond it).

    The auth value, the URL's password and credential-like query values, and auth-like ``headers``
    are registered with :mod:`bastion.core.redact`: every message built from a response is
    redacted before it is cut to length, so none of them reaches a log, an error or a report.
    """

    kind = "http"
    remote = True

    def __init__(self, url: str, *, classes: list[Any], input_spec: InputSpec,
                 request_template: dict[str, Any] | str | None = None, probabilities_path: str | None = None,
                 label_path: str | None = None, auth_header: str = "Authorization", auth_env: str | None = None,
                 auth_prefix: str = "", headers: dict[str, str] | None = None, batch_size: int = 64,
                 timeout: float = 10.0, retries: int = 3, backoff: float = 0.5, max_backoff: float = 30.0,
                 jitter: float = 0.5, rate_limit: float | None = None, max_concurrency: int = 1,
                 max_response_bytes: int = MAX_RESPONSE_BYTES, query_budget: int | None = None,
                 name: str = "") -> None:
        self._secret: str | None = None
        parts = urlsplit(str(url))
        _register_url_secrets(parts)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UsageError(f"'{redact(url)}' is not an http(s) URL")
        if (probabilities_path is None) == (label_path is None):
            raise UsageError("give exactly one of probabilities_path (scores) or label_path (labels only)")
        if batch_size < 1 or timeout <= 0 or retries < 0 or backoff < 0 or max_backoff < 0:
            raise UsageError("batch_size must be >= 1, timeout > 0, retries >= 0 and backoff >= 0 "
                             f"(got batch_size={batch_size}, timeout={timeout}, retries={retries}, backoff={backoff})")
        if not 0.0 <= jitter <= 1.0:
            raise UsageError(f"jitter must be a fraction of the backoff between 0 and 1, got {jitter}")
        if rate_limit is not None and rate_limit <= 0:
            raise UsageError(f"rate_limit must be a positive number of requests per second, got {rate_limit}")
        if int(max_concurrency) != max_concurrency or max_concurrency < 1:
            raise UsageError(f"max_concurrency must be a whole number of requests >= 1, got {max_concurrency}")
        if int(max_response_bytes) != max_response_bytes or max_response_bytes < 1:
            raise UsageError(f"max_response_bytes must be a positive whole number of bytes, got {max_response_bytes}")
        for key, value in (headers or {}).items():
            if AUTH_LIKE.search(str(key)):
                register_secret(str(value))
        self.url = str(url)
        self.template = _parse_template(request_template)
        self.probabilities_path, self.label_path = probabilities_path, label_path
        self.label_only = label_path is not None
        self.auth_header, self.auth_env = auth_header, auth_env
        self.batch_size, self.timeout, self.retries = int(batch_size), float(timeout), int(retries)
        self.backoff, self.max_backoff, self.jitter = float(backoff), float(max_backoff), float(jitter)
        self.rate_limit, self.max_concurrency = rate_limit, int(max_concurrency)
        self.max_response_bytes = int(max_response_bytes)
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        if auth_env:
            value = os.environ.get(auth_env)
            if not value:
                raise UsageError(f"the environment variable '{auth_env}' (auth header value) is not set or empty")
            register_secret(value)
            self._secret = auth_prefix + value
        super().__init__(classes, input_spec, name=name or f"http:{redact_url(self.url)}", query_budget=query_budget)
        self._label_index = {_key(c): i for i, c in enumerate(self.classes)}
        self._client: Any = None
        self._lock = threading.Lock()  # guards the client, the rate-limit slot and the logs
        self._next_slot = 0.0
        self._jitter = random.Random()  # timing only: never affects results
        self.request_log: list[dict[str, Any]] = []
        self._summary = {"requests": 0, "inputs": 0, "seconds": 0.0, "bytes_sent": 0, "bytes_received": 0,
                         "errors": 0, "retries": 0, "status": {}}

    # --- reporting ------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return (f"HttpTarget(url={redact_url(self.url)!r}, classes={len(self.classes)}, "
                f"label_only={self.label_only}, auth_env={self.auth_env!r})")

    @property
    def query_log(self) -> dict[str, Any]:
        """Summary of every request sent: counts, time, bytes, errors, retries, status codes."""
        with self._lock:
            s = copy.deepcopy(self._summary)
        s["seconds"] = round(s["seconds"], 4)
        return s

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({"url": redact_url(self.url), "label_only": self.label_only, "auth_env": self.auth_env,
                  "auth_header": self.auth_header if self.auth_env else None, "batch_size": self.batch_size,
                  "timeout": self.timeout, "retries": self.retries, "rate_limit": self.rate_limit,
                  "max_concurrency": self.max_concurrency, "max_response_bytes": self.max_response_bytes,
                  "query_budget": self.query_budget, "query_log": self.query_log})
        return d

    def close(self) -> None:
        """Close the HTTP connection pool (reopened on the next query)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> HttpTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- predictions ----------------------------------------------------------------------------
    def _predict_proba(self, x: np.ndarray) -> np.ndarray:
        batches = [x[s:s + self.batch_size] for s in range(0, len(x), self.batch_size)]
        if self.max_concurrency == 1 or len(batches) == 1:
            return np.concatenate([self._request(b) for b in batches])
        with ThreadPoolExecutor(min(self.max_concurrency, len(batches)), thread_name_prefix="bastion-http") as pool:
            # each request runs in the caller's context, so the active run (bastion.core.run) logs it
            futures = [pool.submit(contextvars.copy_context().run, self._request, b) for b in batches]
            try:
                return np.concatenate([f.result() for f in futures])
            except BaseException:
                for f in futures:  # requests not yet sent are not sent; those in flight end by their deadline
                    f.cancel()
                raise

    def _fail(self, cls: type[EndpointError], message: str, hint: str | None = None) -> EndpointError:
        return cls(redact(message), hint=redact(hint) if hint else None)

    def _request(self, xb: np.ndarray) -> np.ndarray:
        httpx = require("httpx", "http")
        with self._lock:
            if self._client is None:
                install_log_redaction(logging.getLogger("httpx"))  # httpx logs each URL, query included
                self._client = _deadline.client(self.url, self.timeout)
            client = self._client
        body = json.dumps(_fill(self.template, xb.tolist())).encode()
        headers = dict(self._headers)
        if self._secret is not None:
            headers[self.auth_header] = self._secret
        url = redact_url(self.url)
        attempt = 0
        while True:
            self._throttle()
            t0 = time.perf_counter()
            try:
                status, retry_after, payload = self._send(client, body, headers)
            except httpx.TransportError as exc:
                self._log(len(xb), len(body), 0, None, time.perf_counter() - t0)
                timed_out = isinstance(exc, httpx.TimeoutException)
                failure = type(exc).__name__ + (" (timed out)" if timed_out else "")
                if attempt < self.retries:
                    attempt += 1
                    self._wait(attempt, None, failure)
                    continue
                raise self._fail(EndpointUnreachable,
                                 f"no answer from {url} after {attempt + 1} attempts: {failure}"
                                 + (f" (timeout {self.timeout:g}s for the whole request)" if timed_out else ""),
                                 hint="check the URL, that the service is up, and the timeout") from None
            self._log(len(xb), len(body), len(payload or b""), status, time.perf_counter() - t0)
            if payload is None:
                raise self._fail(ResponseTooLarge, f"{url} answered HTTP {status} with more than "
                                 f"max_response_bytes={self.max_response_bytes} bytes",
                                 hint="lower batch_size (fewer inputs per request), or raise max_response_bytes")
            if status == 429 or status >= 500:
                if attempt < self.retries:
                    attempt += 1
                    self._wait(attempt, retry_after, f"HTTP {status}")
                    continue
                raise self._fail(EndpointError, f"{url} answered HTTP {status} after {attempt + 1} attempts: "
                                 f"{redact_snippet(payload)}",
                                 hint="the service is overloaded or failing; lower rate_limit or retry later")
            if status in (401, 403):
                hint = (f"check the auth header value in the environment variable '{self.auth_env}'"
                        if self.auth_env else "set auth_env to send an auth header")
                raise self._fail(EndpointError, f"{url} refused the request with HTTP {status} (authentication)",
                                 hint=hint)
            if status >= 400:
                raise self._fail(EndpointError, f"{url} answered HTTP {status}: {redact_snippet(payload)}",
                                 hint="check request_template against the API's expected body")
            return self._parse(payload, len(xb))

    def _send(self, client: Any, body: bytes, headers: dict[str, str]) -> tuple[int, str | None, bytes | None]:
        """POST once: status, Retry-After and body (None when over ``max_response_bytes``), the whole
        exchange (connect, send, headers, body) bounded by ``timeout``."""
        with _deadline.deadline(self.timeout), \
                client.stream("POST", self.url, content=body, headers=headers) as resp:
            declared = resp.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > self.max_response_bytes:
                return resp.status_code, None, None
            chunks, size = [], 0
            for chunk in resp.iter_bytes():  # decoded: a compressed bomb is capped by what it expands to
                size += len(chunk)
                if size > self.max_response_bytes:
                    return resp.status_code, None, None
                chunks.append(chunk)
            return resp.status_code, resp.headers.get("Retry-After"), b"".join(chunks)

    def _parse(self, payload: bytes, n: int) -> np.ndarray:
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise self._fail(MalformedResponse,
                             f"{redact_url(self.url)} did not answer with JSON: {redact_snippet(payload)}") from None
        path = self.label_path or self.probabilities_path
        assert path is not None
        try:
            value = _resolve(doc, path)
        except (KeyError, IndexError, TypeError) as exc:
            raise self._fail(MalformedResponse, f"the response has no '{path}' ({redact_snippet(str(exc), 80)}); "
                             f"it starts: {redact_snippet(payload)}",
                             hint="fix probabilities_path / label_path (dotted; '*' maps over a list)") from None
        if self.label_only:
            labels = value if isinstance(value, list) else [value]
            if len(labels) != n:
                raise self._fail(MalformedResponse, f"the response holds {len(labels)} labels at '{path}' for {n} inputs")
            idx = []
            for lab in labels:
                k = _key(lab)
                if k not in self._label_index:
                    raise self._fail(MalformedResponse,
                                     f"the response label '{redact_snippet(str(lab), 40)}' is not one of the "
                                     "target's classes", hint="declare the classes exactly as the API returns them")
                idx.append(self._label_index[k])
            return np.eye(self.n_classes)[idx]
        try:
            p = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise self._fail(MalformedResponse, f"the value at '{path}' is not a numeric array") from None
        if p.shape != (n, self.n_classes):
            raise self._fail(MalformedResponse,
                             f"the value at '{path}' has shape {p.shape}; expected ({n}, {self.n_classes})")
        if not looks_like_probabilities(p):
            raise self._fail(MalformedResponse,
                             f"the values at '{path}' are not probabilities (rows in [0, 1] summing to 1)",
                             hint="point probabilities_path at softmax outputs, or use label_path")
        return p

    # --- transport helpers ----------------------------------------------------------------------
    def _throttle(self) -> None:
        """Wait for this request's slot: at most ``rate_limit`` requests start per second, however
        many threads send them."""
        if not self.rate_limit:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + 1.0 / self.rate_limit
        if slot > now:
            time.sleep(slot - now)

    def _wait(self, attempt: int, retry_after: str | None, why: str) -> None:
        """Back off before retry ``attempt``: ``backoff·2^(attempt-1)`` capped at ``max_backoff``,
        less up to ``jitter`` of it at random (so that clients do not retry in lockstep), and never
        less than the server's ``Retry-After``; one longer than ``max_backoff`` stops the run."""
        url = redact_url(self.url)
        delay = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
        delay *= 1.0 - self.jitter * self._jitter.random()
        ra = _retry_after_seconds(retry_after)
        if ra is not None and ra > self.max_backoff:
            raise self._fail(EndpointError, f"{url} answered {why} and asked to retry after {ra:.0f}s (Retry-After), "
                             f"longer than max_backoff={self.max_backoff:g}s",
                             hint="raise max_backoff to wait that long, lower rate_limit, or run the scan later")
        if ra is not None:
            delay = max(delay, ra)
        with self._lock:
            self._summary["retries"] += 1
        log_retry()
        log.info("%s: %s; retry %d/%d in %.3fs", url, why, attempt, self.retries, delay)
        time.sleep(delay)

    def _log(self, n: int, sent: int, received: int, status: int | None, seconds: float) -> None:
        log_request(inputs=n, seconds=seconds, bytes_sent=sent, bytes_received=received, status=status)
        with self._lock:
            s = self._summary
            s["requests"] += 1
            s["inputs"] += n
            s["seconds"] += seconds
            s["bytes_sent"] += sent
            s["bytes_received"] += received
            key = str(status) if status is not None else "error"
            s["status"][key] = s["status"].get(key, 0) + 1
            if status is None or status >= 400:
                s["errors"] += 1
            if len(self.request_log) < MAX_LOG:
                self.request_log.append({"time": time.time(), "inputs": n, "bytes_sent": sent,
                                         "bytes_received": received, "status": status, "seconds": round(seconds, 5)})


def _register_url_secrets(parts: Any) -> None:
    """The URL's user info and credential-like query values: mask them everywhere, not only in URLs
    (where :func:`redact_url` masks every query value anyway)."""
    if parts.password:
        register_secret(unquote(parts.password))
        register_secret(parts.password)
    elif parts.username:  # https://TOKEN@host
        register_secret(unquote(parts.username))
    for key, value in parse_qsl(parts.query, keep_blank_values=False):
        if AUTH_LIKE.search(key):  # not `?model=digits`: that would mask every "digits" in a report
            register_secret(value)


def _key(label: Any) -> str:
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    if isinstance(label, np.generic):
        label = label.item()
    return str(label)


def _parse_template(t: dict[str, Any] | str | None) -> Any:
    if t is None:
        return {"inputs": PLACEHOLDER}
    if isinstance(t, str):
        try:
            t = json.loads(t)
        except ValueError as exc:
            raise UsageError(f"request_template is not valid JSON: {exc}") from exc
    if _count(t) != 1:
        raise UsageError(f"request_template must hold the placeholder \"{PLACEHOLDER}\" exactly once")
    return t


def _count(node: Any) -> int:
    if node == PLACEHOLDER:
        return 1
    if isinstance(node, dict):
        return sum(_count(v) for v in node.values())
    if isinstance(node, list):
        return sum(_count(v) for v in node)
    return 0


def _fill(node: Any, batch: list[Any]) -> Any:
    if node == PLACEHOLDER:
        return batch
    if isinstance(node, dict):
        return {k: _fill(v, batch) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, batch) for v in node]
    return node


def _resolve(doc: Any, path: str) -> Any:
    """Follow a dotted path; an integer indexes a list, ``*`` maps the rest over a list."""
    parts = [p for p in path.split(".") if p != ""]
    for i, part in enumerate(parts):
        if part == "*":
            if not isinstance(doc, list):
                raise TypeError(f"'*' needs a list, found {type(doc).__name__}")
            rest = ".".join(parts[i + 1:])
            return [_resolve(item, rest) if rest else item for item in doc]
        if isinstance(doc, list):
            doc = doc[int(part)] if part.lstrip("-").isdigit() else doc[part]  # type: ignore[index]
        elif isinstance(doc, dict):
            doc = doc[part]
        else:
            raise TypeError(f"cannot take '{part}' of a {type(doc).__name__}")
    return doc


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(when.timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


def http_target(url: str, *, classes: list[Any] | None = None, input_spec: InputSpec | None = None,
                **options: Any) -> HttpTarget:
    """Build an HttpTarget, refusing unknown options with the list of allowed ones."""
    if classes is None or input_spec is None:
        raise UsageError("an HTTP target needs its classes and its input shape (give the data, or classes and "
                         "input_shape)")
    allowed = ("request_template", "probabilities_path", "label_path", "auth_header", "auth_env", "auth_prefix",
               "headers", "batch_size", "timeout", "retries", "backoff", "max_backoff", "jitter", "rate_limit",
               "max_concurrency", "max_response_bytes", "query_budget", "name")
    unknown = set(options) - set(allowed)
    if unknown:
        raise UsageError(f"unknown HTTP target option(s): {', '.join(sorted(unknown))}; allowed: {', '.join(allowed)}")
    if "probabilities_path" not in options and "label_path" not in options:
        options["probabilities_path"] = "probabilities"
    return HttpTarget(url, classes=classes, input_spec=input_spec, **options)


__all__ = ["EndpointError", "EndpointUnreachable", "HttpTarget", "MalformedResponse", "ResponseTooLarge",
           "http_target"]
