"""A scan of a model reachable only over HTTP: a real server on 127.0.0.1, a secret token,
a query budget exhausted mid-attack, and the endpoint going away between checks."""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bastion.campaign.runner import scan
from http_servers import QuietHandler

SECRET = "s3cr3t-token-do-not-leak"


@pytest.fixture()
def server():
    x, y = load_breast_cancer(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x[:400], y[:400])

    class Handler(QuietHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server API
            if self.headers.get("Authorization") != f"Bearer {SECRET}":
                self.send_response(401)
                self.end_headers()
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            probs = model.predict_proba(np.asarray(body["inputs"], dtype=float)).tolist()
            self._send(200, json.dumps({"probabilities": probs}), {"Content-Type": "application/json"})

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, x[400:460].astype(np.float32), y[400:460]
    httpd.shutdown()
    httpd.server_close()


def test_http_scan_budget_and_outage(server, tmp_path: Path, monkeypatch) -> None:
    httpd, x, y = server
    np.savez(tmp_path / "test.npz", x=x, y=y)
    monkeypatch.setenv("MODEL_TOKEN", SECRET)
    url = f"http://127.0.0.1:{httpd.server_address[1]}/predict"
    policy = {
        "version": 1, "name": "http model",
        "target": {"model": f"http:{url}",
                   "http": {"auth_env": "MODEL_TOKEN", "auth_prefix": "Bearer ", "timeout": 5, "retries": 1,
                            "backoff": 0.05, "batch_size": 32}},
        "data": {"source": f"npz:{tmp_path / 'test.npz'}"},
        "checks": [
            {"name": "square", "kind": "evasion", "attack": "square", "eps": [0.5],
             "params": {"max_queries": 30}},
            {"name": "square-budget", "kind": "evasion", "attack": "square", "eps": [0.5],
             "params": {"max_queries": 200}, "query_budget": 150},
            {"name": "after-outage", "kind": "evasion", "attack": "square", "eps": [0.5],
             "params": {"max_queries": 30}},
        ],
        "gates": ["clean_accuracy[square] >= 0.8", "clean_accuracy[square, check=square] >= 0.8",
                  "findings_high[after-outage] <= 0"],
        "output": {"dir": str(tmp_path / "out")},
    }

    def on_check(res) -> None:
        if res.name == "square-budget":  # the endpoint goes away before the last check
            httpd.shutdown()
            httpd.server_close()

    result = scan(policy, on_check=on_check)
    by_name = {c.name: c for c in result.checks}
    assert by_name["square"].status == "complete"
    assert min(by_name["square"].values("clean_accuracy")) >= 0.8
    assert by_name["square-budget"].status == "incomplete"
    assert "budget" in (by_name["square-budget"].reason or "")
    assert max(by_name["square-budget"].values("queries")) <= 150
    assert by_name["after-outage"].status == "error" and by_name["after-outage"].reason
    assert result.status == "incomplete" and result.verdict == "fail"
    # a gate reading every 'square' check cannot pass while one of them errored; nor can a
    # findings counter of the errored check read 0
    assert not result.gates[0].passed and "after-outage" in result.gates[0].reason
    assert result.gates[1].passed
    assert not result.gates[2].passed and result.gates[2].value is None
    assert "no measurement" in result.gates[2].reason
    for f in (tmp_path / "out").iterdir():
        assert SECRET not in f.read_text(errors="replace"), f"secret leaked into {f.name}"
