"""Keep secrets out of every message, log line and report.

Two kinds of secret are masked with ``***``:

- **registered values** (:func:`register_secret`): an HTTP target's auth header value, the
  password and credential-like query values of its URL, values of auth-like headers. Each is masked
  in every form it takes in text — verbatim, JSON-escaped, URL-encoded, base64 (at each of the three
  byte alignments) and base64-decoded when it is itself base64 — and so is any piece of one of
  those forms at least :data:`PARTIAL` characters long (an endpoint echoing half a token, a snippet
  cut mid-token).
- **URL credentials** (stateless, any text): ``scheme://user:pw@host/p?k=v#f`` becomes
  ``scheme://***@host/p?k=***#f``; the path and the query keys stay readable.

The registry is process-wide and add-only: a secret seen once stays masked for the life of the
process, so a logging filter (:class:`RedactingFilter`) and the report writers can apply it without
being handed the secret. Redact a string *before* cutting it to a display length, never after:
:func:`redact_snippet` does both in that order.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus

MASK = "***"
MIN_SECRET = 4  #: shorter values are not registered: masking them would garble ordinary text
PARTIAL = 6  #: a piece of a secret at least this long is masked too

_lock = threading.Lock()
_values: set[str] = set()  # registered secret values, as given
_forms: tuple[str, ...] = ()  # every textual form of every value, longest first
_grams: frozenset[str] = frozenset()  # every PARTIAL-character piece of every form

_URL = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<auth>[^/\s@?#'\"<>]*@)?"
                  r"(?P<rest>[^\s'\"<>`]*)")


def _encodings(value: str) -> set[str]:
    """The textual forms ``value`` can take in a response, a log line or a report."""
    escaped = json.dumps(value)[1:-1]
    forms = {value, escaped, escaped.replace("/", "\\/"), json.dumps(value, ensure_ascii=False)[1:-1],
             quote(value, safe=""), quote_plus(value, safe="")}
    raw = value.encode("utf-8")
    for pad in range(3):  # base64 of the value at each alignment inside a longer base64 text
        enc = base64.b64encode(b"\0" * pad + raw).decode("ascii")
        skip = (pad * 4 + 2) // 3  # characters that also encode the padding bytes
        forms.add(enc[skip:].rstrip("="))
        forms.add(base64.urlsafe_b64encode(b"\0" * pad + raw).decode("ascii")[skip:].rstrip("="))
    if len(value) % 4 == 0 and re.fullmatch(r"[A-Za-z0-9+/]+=*", value):  # e.g. a Basic auth value
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        if decoded.isprintable():
            forms |= {decoded, *decoded.split(":", 1)[1:]}
    return {f for f in forms if len(f) >= MIN_SECRET}


def register_secret(value: str | None) -> None:
    """Mask ``value`` (and its encodings and long pieces) in everything redacted from now on.

    Values shorter than :data:`MIN_SECRET` characters are ignored."""
    if not value or len(value) < MIN_SECRET:
        return
    global _forms, _grams
    with _lock:
        if value in _values:
            return
        _values.add(value)
        forms = set(_forms) | _encodings(value)
        _forms = tuple(sorted(forms, key=len, reverse=True))
        _grams = frozenset(f[i:i + PARTIAL] for f in forms for i in range(len(f) - PARTIAL + 1))


def longest_form() -> int:
    """Length of the longest registered form: how far past a cut a secret can reach."""
    forms = _forms
    return len(forms[0]) if forms else 0


def _spans(text: str, piece: str) -> list[tuple[int, int]]:
    out, start = [], text.find(piece)
    while start >= 0:
        out.append((start, start + len(piece)))
        start = text.find(piece, start + 1)
    return out


def _mask_registered(text: str) -> str:
    forms, grams = _forms, _grams
    if not forms:
        return text
    spans = [s for f in forms if len(f) < PARTIAL for s in _spans(text, f)]  # forms too short for grams
    if len(text) - PARTIAL < len(grams):  # short text: look each of its pieces up
        spans += [(i, i + PARTIAL) for i in range(len(text) - PARTIAL + 1) if text[i:i + PARTIAL] in grams]
    else:  # long text: search each piece (str.find is fast C)
        spans += [s for g in grams for s in _spans(text, g)]
    if not spans:
        return text
    merged: list[list[int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    out, pos = [], 0
    for a, b in merged:
        out += [text[pos:a], MASK]
        pos = b
    out.append(text[pos:])
    return "".join(out)


def _mask_url(m: re.Match[str]) -> str:
    rest, hsep, fragment = m.group("rest").partition("#")
    path, qsep, query = rest.partition("?")
    if qsep:
        query = "&".join(_mask_pair(p) for p in query.split("&"))
    return m.group("scheme") + (MASK + "@" if m.group("auth") else "") + path + qsep + query + hsep + fragment


def _mask_pair(pair: str) -> str:
    key, sep, value = pair.partition("=")
    if not sep:
        return MASK if key else key
    return f"{key}={MASK}" if value else pair


def redact_url(text: str) -> str:
    """Mask the user info and query values of every URL in ``text`` (nothing else)."""
    return _URL.sub(_mask_url, text) if "://" in text else text


def redact(text: Any) -> str:
    """``text`` (made a string) with every registered secret and every URL credential masked."""
    text = text if isinstance(text, str) else str(text)
    return redact_url(_mask_registered(text))


def redact_snippet(data: bytes | str, limit: int = 120) -> str:
    """The first ``limit`` characters of ``data`` (e.g. a response body) for an error message,
    redacted *before* the cut, so that a secret straddling it is masked whole."""
    window = limit + longest_form() + 8  # a secret starting before the cut ends inside the window
    if isinstance(data, bytes):
        text = data[:window * 4].decode("utf-8", "replace")  # at most 4 bytes per character
        longer = len(data) > window * 4
    else:
        text, longer = data, False
    clean = redact(text[:window])
    return clean[:limit] + ("..." if longer or len(text) > window or len(clean) > limit else "")


T = TypeVar("T")


def redact_tree(obj: T) -> T:
    """A copy of ``obj`` (strings, dicts, lists, tuples, pydantic models) with every string
    redacted; other values are shared, not copied."""
    if isinstance(obj, str):
        return redact(obj)  # type: ignore[return-value]
    if isinstance(obj, dict):
        return {redact_tree(k): redact_tree(v) for k, v in obj.items()}  # type: ignore[return-value]
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_tree(v) for v in obj)  # type: ignore[return-value]
    fields = getattr(type(obj), "model_fields", None)
    if isinstance(fields, dict) and hasattr(obj, "model_copy"):  # a pydantic model
        update = {name: redact_tree(getattr(obj, name)) for name in fields}
        return obj.model_copy(update=update)  # type: ignore[attr-defined, no-any-return]
    return obj


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message (arguments merged in) before any
    handler formats it; install it on the handlers that leave the process."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error handling
            return True
        clean = redact(message)
        if record.exc_info and record.exc_info[1] is not None:
            clean += "\n" + redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info, record.exc_text = None, None
        record.msg, record.args = clean, None
        return True


def install_log_redaction(*where: logging.Filterer) -> None:
    """Add a :class:`RedactingFilter` to each handler or logger in ``where`` (default: the root
    logger's handlers). A filter on a logger covers only records logged on that very logger."""
    for h in where or tuple(logging.getLogger().handlers):
        if not any(isinstance(f, RedactingFilter) for f in h.filters):
            h.addFilter(RedactingFilter())


__all__ = ["MASK", "PARTIAL", "RedactingFilter", "install_log_redaction", "redact", "redact_snippet",
           "redact_tree", "redact_url", "register_secret"]
