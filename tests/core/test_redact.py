"""bastion.core.redact: every form and every long piece of a registered secret is masked, URL
credentials are masked in any text, and snippets are cut only after masking."""

from __future__ import annotations

import base64
import json
import logging
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.core.redact import (MASK, PARTIAL, RedactingFilter, redact, redact_snippet, redact_tree, redact_url,
                                 register_secret)

SECRET = 'rd-9x/Q+"z\\Lw3=Kp7é'  # JSON-, URL- and base64-sensitive characters, one non-ASCII
register_secret(SECRET)


def _pieces(s: str, n: int = 8) -> list[str]:
    return [s[i:i + n] for i in range(len(s) - n + 1)]


def _clean(text: str) -> bool:
    return not any(p in text for p in _pieces(SECRET))


@pytest.mark.parametrize("form", [
    SECRET, json.dumps(SECRET), json.dumps(SECRET, ensure_ascii=False), json.dumps(SECRET).replace("/", "\\/"),
    quote(SECRET, safe=""), quote_plus(SECRET), SECRET[:11], SECRET[-9:],
])
def test_every_form_and_long_piece_is_masked(form: str) -> None:
    text = f"before {form} after"
    out = redact(text)
    assert MASK in out and out.startswith("before ") and out.endswith(" after")
    assert _clean(out) and form[1:-1] not in out


@pytest.mark.parametrize("prefix", ["", "u:", "us:", "user:"])
def test_base64_at_every_alignment(prefix: str) -> None:
    enc = base64.b64encode((prefix + SECRET).encode()).decode()
    out = redact(f"Basic {enc}")
    assert MASK in out
    middle = base64.b64encode(SECRET.encode()).decode()[4:-4]  # alignment-independent core is gone
    assert not any(p in out for p in _pieces(middle, PARTIAL + 2))


def test_a_base64_secret_is_masked_decoded_too() -> None:
    basic = base64.b64encode(b"alice:s3cr3t-pw-77").decode()
    register_secret(basic)
    assert redact("server said alice:s3cr3t-pw-77") == f"server said {MASK}"


def test_short_values_are_not_secrets() -> None:
    register_secret("abc")
    assert redact("abc abcd") == "abc abcd"


def test_urls() -> None:
    assert redact_url("GET https://bob:pw@h.example:8443/p/q?api_key=K1&flag&x=#top done") == \
        f"GET https://{MASK}@h.example:8443/p/q?api_key={MASK}&{MASK}&x=#top done"
    assert redact_url("http:http://h/p?k=v") == f"http:http://h/p?k={MASK}"
    assert redact_url("csv:data.csv?label=y and https://example.com/docs#a") == \
        "csv:data.csv?label=y and https://example.com/docs#a"  # no URL credentials: unchanged


def test_snippet_masks_before_cutting() -> None:
    body = ("x" * 115 + SECRET + "y" * 500).encode()
    snip = redact_snippet(body, limit=120)
    assert snip == "x" * 115 + MASK + "yy..." and _clean(snip)
    # the naive order (cut, then mask) leaks the first part of the secret
    naive = redact(body[:120].decode("utf-8", "replace"))
    assert naive.endswith(SECRET[:5])
    assert redact_snippet(b"short") == "short"


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200), st.integers(0, 200), st.integers(20, 150))
def test_no_cut_leaks_a_piece(noise: str, at: int, limit: int) -> None:
    text = noise[:at] + SECRET + noise[at:]
    assert _clean(redact_snippet(text, limit=limit)) and _clean(redact(text))


def test_tree_and_log_filter(caplog: pytest.LogCaptureFixture) -> None:
    from bastion.core.results import CheckResult, ScanResult

    res = ScanResult(target={"spec": "http:https://u:p@h/x?k=v", "n": 3},
                     checks=[CheckResult(name="c", kind="evasion", status="error", reason=f"echo {SECRET}")])
    clean = redact_tree(res)
    assert clean.checks[0].reason == f"echo {MASK}" and clean.target == {"spec": f"http:https://{MASK}@h/x?k={MASK}",
                                                                          "n": 3}
    assert res.checks[0].reason == f"echo {SECRET}"  # a copy: the caller's result is untouched
    logger = logging.getLogger("bastion.test.redact")
    flt = RedactingFilter()
    logger.addFilter(flt)
    try:
        with caplog.at_level(logging.INFO, logger="bastion.test.redact"):
            logger.info("token %s at %s", SECRET, "https://h/p?key=abc")
    finally:
        logger.removeFilter(flt)
    assert caplog.records[-1].getMessage() == f"token {MASK} at https://h/p?key={MASK}"


def test_http_target_registers_credentials_not_ordinary_parameters() -> None:
    from bastion.core.spec import InputSpec
    from bastion.core.targets.http_target import HttpTarget

    HttpTarget("https://bob:pw-Zr81Lq@h.example/p?model=classification-v2&api_key=k-Tq71Wz",
               classes=[0, 1], input_spec=InputSpec(shape=(2,)), probabilities_path="p",
               headers={"X-Session-Id": "sess-Pq83Nb", "X-Model": "resnet-variant"})
    out = redact("echo pw-Zr81Lq k-Tq71Wz sess-Pq83Nb | classification-v2 resnet-variant")
    assert out == f"echo {MASK} {MASK} {MASK} | classification-v2 resnet-variant"
