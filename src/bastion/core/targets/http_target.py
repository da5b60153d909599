"""A model behind a JSON prediction API, attacked the way a real adversary reaches it.

The request body is a JSON template holding the placeholder ``"$inputs"`` where the batch goes
(nested lists); the response holds the probabilities (or only the labels) at a dotted path
(``outputs.probabilities``, ``predictions.*.label``; ``*`` maps over a list, integers index one).
The auth header value is read from an environment variable and never logged, described, reported
or put in an error message. Batching, timeouts, retries with exponential backoff on 429/5xx
(honouring ``Retry-After``), a client-side rate limit, the Target's hard query budget, and a log of
every request (``request_log``) with its summary (``query_log``) for reports.
"""

from __future__ import annotations

import copy
import email.utils
import json
import logging
import os
import time
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from bastion.core.spec import InputSpec
from bastion.core.targets.base import Target, looks_like_probabilities
from bastion.errors import BastionRuntimeError, UsageError, require

log = logging.getLogger(__name__)

PLACEHOLDER = "$inputs"
MAX_LOG = 100_000  # request records kept in memory


class EndpointError(BastionRuntimeError):
    """The prediction API failed: unreachable, timing out, or answering with an error status."""


class EndpointUnreachable(EndpointError):
    """No answer from the endpoint (connection refused, DNS failure, timeout) after every retry."""


class MalformedResponse(EndpointError):
    """The endpoint answered, but not with what the response path says it should."""


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
    batch_size: inputs per request; timeout: seconds per request; retries: extra attempts on
        429/5xx/transport errors; backoff: first wait in seconds (doubling, capped at
        ``max_backoff``); rate_limit: most requests per second (None: no limit).
    query_budget: hard limit on inputs sent for the whole run (QueryBudgetExceeded beyond it).
    """

    kind = "http"

    def __init__(self, url: str, *, classes: list[Any], input_spec: InputSpec,
                 request_template: dict[str, Any] | str | None = None, probabilities_path: str | None = None,
                 label_path: str | None = None, auth_header: str = "Authorization", auth_env: str | None = None,
                 auth_prefix: str = "", headers: dict[str, str] | None = None, batch_size: int = 64,
                 timeout: float = 10.0, retries: int = 3, backoff: float = 0.5, max_backoff: float = 30.0,
                 rate_limit: float | None = None, query_budget: int | None = None, name: str = "") -> None:
        self._secret: str | None = None
        parts = urlsplit(str(url))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UsageError(f"'{_safe_url(url)}' is not an http(s) URL")
        if (probabilities_path is None) == (label_path is None):
            raise UsageError("give exactly one of probabilities_path (scores) or label_path (labels only)")
        if batch_size < 1 or timeout <= 0 or retries < 0 or backoff < 0 or max_backoff < 0:
            raise UsageError("batch_size must be >= 1, timeout > 0, retries >= 0 and backoff >= 0 "
                             f"(got batch_size={batch_size}, timeout={timeout}, retries={retries}, backoff={backoff})")
        if rate_limit is not None and rate_limit <= 0:
            raise UsageError(f"rate_limit must be a positive number of requests per second, got {rate_limit}")
        self.url = str(url)
        self.template = _parse_template(request_template)
        self.probabilities_path, self.label_path = probabilities_path, label_path
        self.label_only = label_path is not None
        self.auth_header, self.auth_env = auth_header, auth_env
        self.batch_size, self.timeout, self.retries = int(batch_size), float(timeout), int(retries)
        self.backoff, self.max_backoff, self.rate_limit = float(backoff), float(max_backoff), rate_limit
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        if auth_env:
            value = os.environ.get(auth_env)
            if not value:
                raise UsageError(f"the environment variable '{auth_env}' (auth header value) is not set or empty")
            self._secret = auth_prefix + value
        super().__init__(classes, input_spec, name=name or f"http:{_safe_url(url)}", query_budget=query_budget)
        self._label_index = {_key(c): i for i, c in enumerate(self.classes)}
        self._client: Any = None
        self._last_request = 0.0
        self.request_log: list[dict[str, Any]] = []
        self._summary = {"requests": 0, "inputs": 0, "seconds": 0.0, "bytes_sent": 0, "bytes_received": 0,
                         "errors": 0, "retries": 0, "status": {}}

    # --- reporting ------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return (f"HttpTarget(url={_safe_url(self.url)!r}, classes={len(self.classes)}, "
                f"label_only={self.label_only}, auth_env={self.auth_env!r})")

    @property
    def query_log(self) -> dict[str, Any]:
        """Summary of every request sent: counts, time, bytes, errors, retries, status codes."""
        s = copy.deepcopy(self._summary)
        s["seconds"] = round(s["seconds"], 4)
        return s

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({"url": _safe_url(self.url), "label_only": self.label_only, "auth_env": self.auth_env,
                  "auth_header": self.auth_header if self.auth_env else None, "batch_size": self.batch_size,
                  "timeout": self.timeout, "retries": self.retries, "rate_limit": self.rate_limit,
                  "query_budget": self.query_budget, "query_log": self.query_log})
        return d

    def close(self) -> None:
        """Close the HTTP connection pool (reopened on the next query)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> HttpTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- predictions ----------------------------------------------------------------------------
    def _predict_proba(self, x: np.ndarray) -> np.ndarray:
        out = [self._request(x[s:s + self.batch_size]) for s in range(0, len(x), self.batch_size)]
        return np.concatenate(out)

    def _request(self, xb: np.ndarray) -> np.ndarray:
        httpx = require("httpx", "http")
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout)
        body = json.dumps(_fill(self.template, xb.tolist())).encode()
        headers = dict(self._headers)
        if self._secret is not None:
            headers[self.auth_header] = self._secret
        attempt = 0
        while True:
            self._throttle()
            t0 = time.perf_counter()
            status: int | None = None
            try:
                resp = self._client.post(self.url, content=body, headers=headers)
                status = resp.status_code
                payload = resp.content
            except httpx.TransportError as exc:
                self._log(len(xb), len(body), 0, None, time.perf_counter() - t0)
                failure = f"{type(exc).__name__}" + (" (timed out)" if isinstance(exc, httpx.TimeoutException) else "")
                if attempt < self.retries:
                    attempt += 1
                    self._wait(attempt, None, failure)
                    continue
                raise EndpointUnreachable(self._redact(
                    f"no answer from {_safe_url(self.url)} after {attempt + 1} attempts: {failure}"),
                    hint="check the URL, that the service is up, and the timeout") from None
            self._log(len(xb), len(body), len(payload), status, time.perf_counter() - t0)
            if status == 429 or status >= 500:
                if attempt < self.retries:
                    attempt += 1
                    self._wait(attempt, resp.headers.get("Retry-After"), f"HTTP {status}")
                    continue
                raise EndpointError(f"{_safe_url(self.url)} answered HTTP {status} after {attempt + 1} attempts",
                                    hint="the service is overloaded or failing; lower rate_limit or retry later")
            if status in (401, 403):
                hint = (f"check the auth header value in the environment variable '{self.auth_env}'"
                        if self.auth_env else "set auth_env to send an auth header")
                raise EndpointError(f"{_safe_url(self.url)} refused the request with HTTP {status} (authentication)",
                                    hint=hint)
            if status >= 400:
                raise EndpointError(f"{_safe_url(self.url)} answered HTTP {status}: {self._snippet(payload)}",
                                    hint="check request_template against the API's expected body")
            return self._parse(payload, len(xb))

    def _parse(self, payload: bytes, n: int) -> np.ndarray:
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise MalformedResponse(
                f"{_safe_url(self.url)} did not answer with JSON: {self._snippet(payload)}") from None
        path = self.label_path or self.probabilities_path
        assert path is not None
        try:
            value = _resolve(doc, path)
        except (KeyError, IndexError, TypeError) as exc:
            raise MalformedResponse(f"the response has no '{path}' ({exc}); it starts: {self._snippet(payload)}",
                                    hint="fix probabilities_path / label_path (dotted; '*' maps over a list)") from None
        if self.label_only:
            labels = value if isinstance(value, list) else [value]
            if len(labels) != n:
                raise MalformedResponse(f"the response holds {len(labels)} labels at '{path}' for {n} inputs")
            idx = []
            for lab in labels:
                k = _key(lab)
                if k not in self._label_index:
                    raise MalformedResponse(f"the response label {str(lab)[:40]!r} is not one of the target's classes",
                                            hint="declare the classes exactly as the API returns them")
                idx.append(self._label_index[k])
            return np.eye(self.n_classes)[idx]
        try:
            p = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise MalformedResponse(f"the value at '{path}' is not a numeric array") from None
        if p.shape != (n, self.n_classes):
            raise MalformedResponse(f"the value at '{path}' has shape {p.shape}; expected ({n}, {self.n_classes})")
        if not looks_like_probabilities(p):
            raise MalformedResponse(f"the values at '{path}' are not probabilities (rows in [0, 1] summing to 1)",
                                    hint="point probabilities_path at softmax outputs, or use label_path")
        return p

    # --- transport helpers ----------------------------------------------------------------------
    def _throttle(self) -> None:
        if self.rate_limit:
            wait = self._last_request + 1.0 / self.rate_limit - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        self._last_request = time.monotonic()

    def _wait(self, attempt: int, retry_after: str | None, why: str) -> None:
        delay = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
        ra = _retry_after_seconds(retry_after)
        if ra is not None:
            delay = min(max(delay, ra), self.max_backoff)
        self._summary["retries"] += 1
        log.info("%s: %s; retry %d/%d in %.2fs", _safe_url(self.url), why, attempt, self.retries, delay)
        time.sleep(delay)

    def _log(self, n: int, sent: int, received: int, status: int | None, seconds: float) -> None:
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
            self.request_log.append({"time": time.time(), "inputs": n, "bytes_sent": sent, "bytes_received": received,
                                     "status": status, "seconds": round(seconds, 5)})

    def _redact(self, text: str) -> str:
        if self._secret:
            text = text.replace(self._secret, "***")
            raw = self._secret.split()[-1] if self._secret.split() else ""
            if raw:
                text = text.replace(raw, "***")
        return text

    def _snippet(self, payload: bytes) -> str:
        return self._redact(payload[:120].decode("utf-8", "replace")) + ("..." if len(payload) > 120 else "")


def _safe_url(url: Any) -> str:
    """The URL without credentials or query string (both may hold secrets)."""
    p = urlsplit(str(url))
    host = p.hostname or ""
    if p.port:
        host = f"{host}:{p.port}"
    return f"{p.scheme}://{host}{p.path}" if p.scheme else str(url).split("?")[0]


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
               "headers", "batch_size", "timeout", "retries", "backoff", "max_backoff", "rate_limit", "query_budget",
               "name")
    unknown = set(options) - set(allowed)
    if unknown:
        raise UsageError(f"unknown HTTP target option(s): {', '.join(sorted(unknown))}; allowed: {', '.join(allowed)}")
    if "probabilities_path" not in options and "label_path" not in options:
        options["probabilities_path"] = "probabilities"
    return HttpTarget(url, classes=classes, input_spec=input_spec, **options)


__all__ = ["EndpointError", "EndpointUnreachable", "HttpTarget", "MalformedResponse", "http_target"]
