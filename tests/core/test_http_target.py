"""HttpTarget against a real HTTP server on 127.0.0.1 (standard library, in a thread) serving a
scikit-learn model: predictions, auth, retries, timeouts, malformed answers, budgets, secrecy."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from http_servers import QuietHandler, trickle

from bastion.core.spec import InputSpec
from bastion.core.targets.http_target import (EndpointError, EndpointUnreachable, HttpTarget, MalformedResponse,
                                              ResponseTooLarge)
from bastion.errors import BastionRuntimeError, QueryBudgetExceeded, TargetError, UsageError

SECRET = "s3cr3t-Token-9f8e7d"
ENV = "BASTION_TEST_API_KEY"


class Model:
    """Logistic regression on the 8×8 digits, flattened to 64 features in [0, 1]."""

    def __init__(self) -> None:
        from sklearn.datasets import load_digits
        from sklearn.linear_model import LogisticRegression

        d = load_digits()
        self.x = (d.data / 16.0).astype(np.float32)
        self.y = d.target
        self.est = LogisticRegression(max_iter=300).fit(self.x[:1200], self.y[:1200])


class Server:
    def __init__(self, model: Model) -> None:
        self.model = model
        self.calls: dict[str, int] = {}
        self.seen_auth: list[str | None] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:  # noqa: N802
                path = self.path
                n_calls = server.calls[path] = server.calls.get(path, 0) + 1
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                key = self.headers.get("X-Api-Key")
                server.seen_auth.append(key)
                if path.startswith("/secure") and key != SECRET:
                    return self._send(401, b'{"error": "unauthorized"}')
                if path == "/echo":  # a hostile server echoing the credential back in an error
                    return self._send(400, json.dumps({"error": f"bad key {key}"}).encode())
                if path == "/flaky429" and n_calls <= 2:
                    return self._send(429, b"slow down", {"Retry-After": "0"})
                if path == "/retry-after" and n_calls == 1:
                    return self._send(429, b"slow down", {"Retry-After": "1"})
                if path == "/hiccup" and 5 <= n_calls < 8:  # fails for three calls mid-attack, then recovers
                    return self._send(502, b"bad gateway")
                if path in ("/flaky500", "/down") and (n_calls <= 1 or path == "/down"):
                    return self._send(503, b"unavailable")
                if path == "/slow":
                    time.sleep(1.5)
                if path == "/retry-later":
                    return self._send(429, b"come back in two minutes", {"Retry-After": "120"})
                if path == "/trickle":  # a valid answer's first 50 bytes, one every 0.2 s
                    self.send_response(200)
                    self.send_header("Content-Length", "100")
                    self.end_headers()
                    return trickle(self.wfile, b" " * 50)
                if path == "/trickle-headers":  # the headers themselves, one byte every 0.2 s
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                    self.close_connection = True
                    return trickle(self.wfile, b"z" * 50)
                if path in ("/huge", "/huge-declared"):  # 200 MB, with or without a Content-Length
                    self.send_response(200)
                    if path == "/huge-declared":
                        self.send_header("Content-Length", str(200 * 2**20))
                    self.end_headers()
                    try:
                        for _ in range(200):
                            self.wfile.write(b" " * 2**20)
                    except OSError:  # the client hung up, as it should
                        pass
                    self.close_connection = True
                    return None
                if path == "/concurrent":
                    with server.lock:
                        server.in_flight += 1
                        server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    time.sleep(0.15)
                    with server.lock:
                        server.in_flight -= 1
                if path == "/malformed":
                    return self._send(200, b"<html>not json</html>")
                body = json.loads(raw)
                x = np.asarray(body["data"]["rows"], np.float32)
                p = server.model.est.predict_proba(x)
                if path == "/noisy":  # fresh noise on every answer, renormalised
                    p = p * np.random.default_rng().uniform(0.5, 1.5, p.shape)
                    p /= p.sum(1, keepdims=True)
                if path == "/labels":
                    out = {"predictions": [{"label": int(k)} for k in p.argmax(1)]}
                elif path == "/wrongshape":
                    out = {"result": {"probs": p[:, :3].tolist()}}
                else:
                    out = {"result": {"probs": p.tolist()}}
                self._send(200, json.dumps(out).encode(), {"Content-Type": "application/json"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="module")
def model() -> Model:
    return Model()


@pytest.fixture()
def server(model: Model) -> Iterator[Server]:
    s = Server(model)
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture()
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, SECRET)


SPEC = InputSpec(shape=(64,), lower=0.0, upper=1.0)
TEMPLATE = {"data": {"rows": "$inputs"}, "model": "v1"}


def make(server: Server, path: str = "/secure/predict", **kw: Any) -> HttpTarget:
    opts: dict[str, Any] = {"request_template": TEMPLATE, "probabilities_path": "result.probs",
                            "auth_header": "X-Api-Key", "auth_env": ENV, "batch_size": 16, "timeout": 5.0,
                            "retries": 2, "backoff": 0.01}
    opts.update(kw)
    return HttpTarget(server.url(path), classes=list(range(10)), input_spec=SPEC, **opts)


def _no_secret(*texts: str) -> None:
    for t in texts:
        assert SECRET not in t


def test_predictions_match_the_served_model(server: Server, model: Model, secret_env: None) -> None:
    t = make(server)
    x = model.x[1200:1250]
    p = t.predict_proba(x)
    np.testing.assert_allclose(p, model.est.predict_proba(x), atol=1e-6)
    log = t.query_log
    assert log["requests"] == 4 and log["inputs"] == 50  # 16 + 16 + 16 + 2
    assert log["bytes_sent"] > 0 and log["bytes_received"] > 0 and log["status"] == {"200": 4}
    assert len(t.request_log) == 4 and t.queries == 50
    assert set(server.seen_auth) == {SECRET}


def test_secret_never_leaks(server: Server, model: Model, secret_env: None,
                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    t = make(server)
    t.predict_proba(model.x[:5])
    texts = [repr(t), str(t.describe()), json.dumps(t.describe(), default=str), str(t.query_log), caplog.text]
    hostile = make(server, path="/echo")
    with pytest.raises(EndpointError) as err:
        hostile.predict_proba(model.x[:2])
    texts += [str(err.value), repr(err.value)]
    bad = make(server, path="/secure/predict")
    bad._secret = "wrong"  # the server refuses: the message names the variable, never a value
    with pytest.raises(EndpointError, match=ENV) as err401:
        bad.predict_proba(model.x[:2])
    texts += [str(err401.value), caplog.text]
    _no_secret(*texts)
    assert "***" in str(err.value)  # the echoed credential was redacted, not dropped silently


def test_auth_env_missing_is_a_usage_error(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(UsageError, match=ENV):
        make(server)


def test_retries_on_429_and_5xx(server: Server, model: Model, secret_env: None) -> None:
    t = make(server, path="/flaky429")
    np.testing.assert_allclose(t.predict_proba(model.x[:3]), model.est.predict_proba(model.x[:3]), atol=1e-6)
    assert t.query_log["retries"] == 2 and t.query_log["status"] == {"429": 2, "200": 1}
    t5 = make(server, path="/flaky500")
    t5.predict_proba(model.x[:3])
    assert t5.query_log["retries"] == 1 and t5.query_log["errors"] == 1


def test_retry_after_is_respected(server: Server, model: Model, secret_env: None) -> None:
    t = make(server, path="/retry-after", backoff=0.01)
    t0 = time.perf_counter()
    t.predict_proba(model.x[:2])
    assert time.perf_counter() - t0 >= 0.9


def test_persistent_5xx_gives_up(server: Server, model: Model, secret_env: None) -> None:
    t = make(server, path="/down", retries=2)
    with pytest.raises(EndpointError, match="503 after 3 attempts"):
        t.predict_proba(model.x[:2])
    assert server.calls["/down"] == 3


def test_timeout_and_unreachable(server: Server, model: Model, secret_env: None) -> None:
    t = make(server, path="/slow", timeout=0.3, retries=1)
    with pytest.raises(EndpointUnreachable, match="timed out"):
        t.predict_proba(model.x[:2])
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = HttpTarget(f"http://127.0.0.1:{port}/predict", classes=list(range(10)), input_spec=SPEC,
                      probabilities_path="p", retries=1, backoff=0.01, timeout=1.0)
    with pytest.raises(EndpointUnreachable) as err:
        dead.predict_proba(model.x[:2])
    assert isinstance(err.value, BastionRuntimeError) and "127.0.0.1" in str(err.value)


def test_malformed_responses(server: Server, model: Model, secret_env: None) -> None:
    with pytest.raises(MalformedResponse, match="JSON"):
        make(server, path="/malformed").predict_proba(model.x[:2])
    with pytest.raises(MalformedResponse, match="shape"):
        make(server, path="/wrongshape").predict_proba(model.x[:2])
    with pytest.raises(MalformedResponse, match="result.nope"):
        make(server, path="/ok", probabilities_path="result.nope").predict_proba(model.x[:2])


def test_rate_limit(server: Server, model: Model, secret_env: None) -> None:
    t = make(server, path="/ok", rate_limit=20.0, batch_size=1)
    t0 = time.perf_counter()
    t.predict_proba(model.x[:6])
    assert time.perf_counter() - t0 >= 5 / 20.0 - 0.01


def test_bad_configuration_is_refused(server: Server) -> None:
    with pytest.raises(UsageError, match="exactly one"):
        HttpTarget(server.url("/ok"), classes=[0, 1], input_spec=SPEC)
    with pytest.raises(UsageError, match="placeholder"):
        HttpTarget(server.url("/ok"), classes=[0, 1], input_spec=SPEC, probabilities_path="p",
                   request_template={"rows": "inputs"})
    with pytest.raises(UsageError, match="not an http"):
        HttpTarget("ftp://host/x", classes=[0, 1], input_spec=SPEC, probabilities_path="p")


def test_label_only_endpoint(server: Server, model: Model, secret_env: None) -> None:
    from bastion.attacks import HopSkipJump, Square

    t = make(server, path="/labels", probabilities_path=None, label_path="predictions.*.label", batch_size=64)
    assert t.label_only
    x, y = model.x[1200:1210], model.y[1200:1210]
    p = t.predict_proba(x)
    assert set(np.unique(p)) <= {0.0, 1.0} and np.all(p.sum(1) == 1)
    np.testing.assert_array_equal(p.argmax(1), model.est.predict(x))
    with pytest.raises(TargetError, match="labels only"):
        Square(eps=0.1, max_queries=10).run(t, x, y)
    res = HopSkipJump(max_queries=150).run(t, x, y)
    assert res.complete and res.success[res.clean_pred == y].all()
    assert res.extra["query_log"]["requests"] > 0


def test_budget_exhaustion_mid_attack_gives_a_partial_result(server: Server, model: Model, secret_env: None) -> None:
    from bastion.attacks import Square

    t = make(server, path="/ok", query_budget=400, batch_size=64)
    x, y = model.x[1200:1240], model.y[1200:1240]
    res = Square(eps=0.05, max_queries=200, batch_size=20).run(t, x, y)
    assert not res.complete and "budget" in (res.reason or "")
    assert t.queries <= 400 and res.queries <= 400
    assert np.abs(res.x_adv - x).max() <= 0.05 + 1e-6  # what was done is kept, and valid
    # the log holds every input sent: the attacker's (budgeted) plus bastion's final measurement
    assert res.extra["query_log"]["inputs"] == t.queries + len(x)
    with pytest.raises(QueryBudgetExceeded):
        t.predict_proba(x)


def test_load_target_http_scheme(server: Server, model: Model, secret_env: None) -> None:
    from bastion.core.loader import load_target

    t = load_target(f"http:{server.url('/secure/predict')}", classes=list(range(10)), input_shape=(64,),
                    bounds=(0.0, 1.0), request_template=json.dumps(TEMPLATE), probabilities_path="result.probs",
                    auth_header="X-Api-Key", auth_env=ENV, timeout=5.0, query_budget=100)
    assert isinstance(t, HttpTarget) and t.query_budget == 100
    np.testing.assert_array_equal(t.predict(model.x[:4]), model.est.predict(model.x[:4]))
    with pytest.raises(UsageError, match="unknown HTTP target option"):
        load_target(f"http:{server.url('/ok')}", classes=[0, 1], input_shape=(64,), wat=1)


def test_endpoint_failing_mid_attack_keeps_what_was_done(server: Server, model: Model, secret_env: None) -> None:
    from bastion.attacks import Square

    t = make(server, path="/hiccup", retries=2, batch_size=64)
    x, y = model.x[1200:1240], model.y[1200:1240]
    res = Square(eps=0.05, max_queries=100, batch_size=20).run(t, x, y)
    assert not res.complete and "target failed" in res.reason and "502" in res.reason
    assert np.abs(res.x_adv - x).max() <= 0.05 + 1e-6
    assert res.extra["query_log"]["errors"] == 3 and res.extra["query_log"]["retries"] == 2
    assert res.extra["queries_per_sample"]["attacked"] == int((res.clean_pred == y).sum())


def test_concurrent_requests_keep_order_and_the_limit(server: Server, model: Model, secret_env: None) -> None:
    x = model.x[1200:1208]
    t = make(server, path="/concurrent", batch_size=1, max_concurrency=4)
    np.testing.assert_allclose(t.predict_proba(x), model.est.predict_proba(x), atol=1e-6)  # rows in order
    assert 2 <= server.max_in_flight <= 4 and t.query_log["requests"] == 8
    server.max_in_flight = 0
    make(server, path="/concurrent", batch_size=1).predict_proba(x)  # default: one at a time
    assert server.max_in_flight == 1


def test_rate_limit_holds_across_concurrent_requests(server: Server, model: Model, secret_env: None) -> None:
    t = make(server, path="/ok", rate_limit=20.0, batch_size=1, max_concurrency=4)
    t0 = time.perf_counter()
    t.predict_proba(model.x[:8])
    assert time.perf_counter() - t0 >= 7 / 20.0 - 0.01


def _logged_delays(caplog: pytest.LogCaptureFixture) -> list[float]:
    return [float(r.getMessage().rsplit(" in ", 1)[1].rstrip("s")) for r in caplog.records if "retry" in r.getMessage()]


def test_backoff_is_jittered(server: Server, model: Model, secret_env: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bastion.core.targets.http_target")
    with pytest.raises(EndpointError):
        make(server, path="/down", retries=6, backoff=0.02, max_backoff=0.04, jitter=0.0).predict_proba(model.x[:1])
    assert _logged_delays(caplog) == [0.02, 0.04, 0.04, 0.04, 0.04, 0.04]  # doubling, capped
    caplog.clear()
    with pytest.raises(EndpointError):
        make(server, path="/down", retries=8, backoff=0.04, max_backoff=0.04, jitter=1.0).predict_proba(model.x[:1])
    delays = _logged_delays(caplog)
    assert len(delays) == 8 and all(0.0 <= d <= 0.04 for d in delays) and len(set(delays)) >= 4  # ms resolution


def test_retry_after_beyond_max_backoff_is_reported(server: Server, model: Model, secret_env: None) -> None:
    t = make(server, path="/retry-later", retries=3, max_backoff=2.0)
    t0 = time.perf_counter()
    with pytest.raises(EndpointError, match=r"retry after 120s \(Retry-After\), longer than max_backoff=2s") as err:
        t.predict_proba(model.x[:2])
    assert time.perf_counter() - t0 < 10.0 and server.calls["/retry-later"] == 1  # no pointless short retries
    assert "raise max_backoff" in str(err.value)


@pytest.mark.parametrize("path", ["/trickle", "/trickle-headers"])
def test_timeout_bounds_the_whole_request(server: Server, model: Model, secret_env: None, path: str) -> None:
    t = make(server, path=path, timeout=0.6, retries=0)
    t0 = time.perf_counter()
    with pytest.raises(EndpointUnreachable, match="timed out.*0.6s for the whole request"):
        t.predict_proba(model.x[:2])
    assert time.perf_counter() - t0 < 4.0  # the trickle lasts 10 s
    make(server, path="/ok", timeout=0.6).predict_proba(model.x[:2])  # a prompt answer is unaffected


@pytest.mark.parametrize("path", ["/huge", "/huge-declared"])
def test_response_size_is_capped(server: Server, model: Model, secret_env: None, path: str) -> None:
    import tracemalloc

    t = make(server, path=path, retries=0, timeout=20.0)
    tracemalloc.start()
    try:
        with pytest.raises(ResponseTooLarge, match="max_response_bytes=16777216") as err:
            t.predict_proba(model.x[:2])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"reading the answer took {peak / 2**20:.0f} MiB"
    assert "lower batch_size" in str(err.value)
    with pytest.raises(ResponseTooLarge, match="max_response_bytes=1000"):
        make(server, path=path, retries=0, max_response_bytes=1000).predict_proba(model.x[:2])


def test_new_options_are_validated(server: Server) -> None:
    for bad, match in (({"jitter": 1.5}, "jitter"), ({"max_concurrency": 0}, "max_concurrency"),
                       ({"max_response_bytes": 0}, "max_response_bytes")):
        with pytest.raises(UsageError, match=match):
            HttpTarget(server.url("/ok"), classes=[0, 1], input_spec=SPEC, probabilities_path="p", **bad)


def test_extraction_over_http_within_the_endpoints_budget_and_rate_limit(server: Server, model: Model,
                                                                         secret_env: None) -> None:
    """Equation solving copies the served logistic regression exactly from d+1 = 65 queries; a
    Knockoff copy plans its rounds within what the endpoint's own hard budget leaves."""
    from bastion.attacks.extraction import get_extraction_attack

    t = make(server, path="/ok", query_budget=200, rate_limit=200.0, batch_size=64)
    pool = model.x[1200:1500]
    res = get_extraction_attack("equation-solving").run(t, pool)
    assert res.queries == 65 == t.queries and res.fidelity == 1.0
    assert res.surrogate.predict(model.x[1500:]).tolist() == model.est.predict(model.x[1500:]).tolist()
    res = get_extraction_attack("knockoff", rounds=2, epochs=5).run(t, pool)  # 240 queryable, 135 left
    assert res.complete and res.curve.queries == [68, 135] and t.queries == 200 and res.fidelity > 0.5


def test_adaptive_knockoff_over_http_spends_the_budget_a_step_per_request(server: Server, model: Model,
                                                                         secret_env: None) -> None:
    """Knockoff's adaptive strategy sends each policy step (``step`` inputs) as one request, within the
    endpoint's hard budget and rate limit, and stops at the budget."""
    from bastion.attacks.extraction import get_extraction_attack

    t = make(server, path="/ok", query_budget=100, rate_limit=200.0, batch_size=64)
    before = server.calls.get("/ok", 0)
    res = get_extraction_attack("knockoff", strategy="adaptive", step=16, clusters=4, rounds=2, epochs=5).run(
        t, model.x[1200:1500])
    assert res.complete and res.curve.queries == [50, 100] and t.queries == 100 == res.queries
    # bastion's uncounted reference answers for the held-out inputs, then per round 50 queries in steps
    # of 16, 16, 16 and 2: one request each
    assert server.calls["/ok"] - before == 1 + 2 * 4


def test_membership_over_http_repeats_queries_on_a_declared_randomised_endpoint(server: Server, model: Model,
                                                                                secret_env: None) -> None:
    """An endpoint declared randomised is asked each record 16 times (the answers averaged), every repeat
    counted against its hard budget and sent in its batches under its rate limit."""
    from bastion.attacks.privacy import MembershipSplits, get_membership_attack

    splits = MembershipSplits(model.x[:12], model.y[:12], model.x[1500:1512], model.y[1500:1512])
    t = make(server, path="/noisy", query_budget=400, rate_limit=200.0, batch_size=64)
    t.randomized = True  # as target.randomized: true in a policy
    res = get_membership_attack("loss-threshold").run(t, splits)
    assert res.repeats == 16 and res.queries == 24 * 16 == t.queries and server.calls["/noisy"] == 6
    with pytest.raises(QueryBudgetExceeded):  # another 384 queries do not fit in the 16 left
        get_membership_attack("loss-threshold").run(t, splits)
    assert t.queries == 384


def test_label_only_membership_inference_over_http(server: Server, model: Model, secret_env: None) -> None:
    """``label-robustness`` runs against a label-only API: every noisy copy is a counted query sent
    over HTTP, and a budget too small for it is refused before any request."""
    from sklearn.linear_model import LogisticRegression

    from bastion.attacks.privacy import MembershipSplits, get_membership_attack
    from bastion.core.run import RunContext
    from bastion.core.threat import ThreatModel
    from bastion.core.training import sklearn_train_fn

    t = make(server, path="/labels", probabilities_path=None, label_path="predictions.*.label", batch_size=64)
    x, y = model.x, model.y
    splits = MembershipSplits(x[:100], y[:100], x[1200:1300], y[1200:1300], x[1300:1500], y[1300:1500])
    attack = get_membership_attack("label-robustness", copies=2, levels=[0.1], reference_models=1, cache=False)
    trainer = sklearn_train_fn(LogisticRegression(max_iter=300))
    with pytest.raises(UsageError, match="asks 600 queries"):
        attack.run(t, splits, ThreatModel(query_budget=599), trainer=trainer)
    assert server.calls.get("/labels", 0) == 0
    res = attack.run(t, splits, ThreatModel(query_budget=600), ctx=RunContext(seed=0), trainer=trainer)
    assert res.queries == 600 and t.queries == 600
    assert server.calls["/labels"] >= 600 // 64
    assert 0.0 <= res.auc <= 1.0 and len(res.member_scores) == 100
