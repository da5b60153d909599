"""Secrets never leak: a hostile prediction API on 127.0.0.1 echoes every credential it receives
(the auth header, the URL's password and query token) in every form — verbatim, JSON-escaped,
URL-encoded, base64, straddling the 120-byte cut of error snippets — through every failure path
of an HTTP target. Real ``bastion scan`` / ``bastion attack`` invocations (the console-script
``main``, run in one child process to pay the import once, plus one plain ``bastion`` process) must
keep every 8-character piece of every secret out of report.json, report.html, junit.xml,
report.sarif, stdout and stderr (``-v`` logs included)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import numpy as np
import pytest
from http_servers import QuietHandler, trickle

TOKEN = "Tk7/qZ+w9R=xP2mL4vB8nC6s"  # "/", "+", "=" change under JSON-escaping and URL-encoding
PASSWORD = "pw-Hq3Zr8Ks1Vd5"
QUERY_TOKEN = "qk-Yf4Gb7Nt2Wc9Xe"
SECRETS = (TOKEN, PASSWORD, QUERY_TOKEN)
ENV = "BASTION_LEAK_TEST_TOKEN"


def _echo(creds: list[str]) -> str:
    """Every credential in every form, the first one straddling byte 120."""
    forms = []
    for c in creds:
        forms += [c, json.dumps(c), c.replace("/", "\\/"), quote(c, safe=""), base64.b64encode(c.encode()).decode()]
    return "x" * 112 + " ".join(forms)


class Hostile(QuietHandler):
    """One failure mode per path; each answer carries back what the client sent."""

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        url = urlsplit(self.path)
        mode = url.path.strip("/")
        n = len(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["inputs"])
        creds = [v for v in (self.headers.get("Authorization"), self.headers.get("X-Api-Key")) if v]
        creds += parse_qs(url.query).get("api_key", [])
        if mode == "basic":  # also the decoded user:password of a Basic header
            creds += [base64.b64decode(c.split()[-1]).decode() for c in creds if c.startswith("Basic ")]
        echo = _echo(creds)
        if mode == "ok":
            return self._send(200, json.dumps({"probabilities": [[0.9, 0.1]] * n}))
        if mode == "e500":
            return self._send(500, echo)
        if mode == "e401":
            return self._send(401, echo)
        if mode == "e429":
            return self._send(429, echo, {"Retry-After": "0"})
        if mode == "retry-after":
            return self._send(503, echo, {"Retry-After": "3600"})
        if mode == "badjson":
            return self._send(200, "{" + echo)
        if mode == "html":
            return self._send(200, f"<html><body>{echo}</body></html>", {"Content-Type": "text/html"})
        if mode == "classes":
            return self._send(200, json.dumps({"probabilities": [[0.2, 0.3, 0.5]] * n, "debug": echo}))
        if mode == "rows":
            return self._send(200, json.dumps({"probabilities": [[0.5, 0.5]] * (n + 1), "debug": echo}))
        if mode == "nan":
            return self._send(200, json.dumps({"probabilities": [[float("nan")] * 2] * n, "debug": echo}))
        if mode in ("label", "basic"):
            return self._send(200, json.dumps({"labels": [creds[0]] * n}))
        if mode == "big":
            return self._send(200, echo + " " * 5000)
        if mode == "close":  # read the request, answer nothing, hang up
            self.close_connection = True
            return None
        if mode == "trickle":  # headers at once, then the echo one byte per 0.2 s
            self.send_response(200)
            self.send_header("Content-Length", str(len(echo)))
            self.end_headers()
            self.close_connection = True
            return trickle(self.wfile, echo[:40].encode())
        return self._send(404, echo)


@pytest.fixture(scope="module")
def hostile() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


# mode -> what the check's (or the command's) error must say: proof the path was taken
SCAN_MODES = {
    "e500": "HTTP 500 after 2 attempts", "e401": "HTTP 401", "e429": "HTTP 429 after 2 attempts",
    "retry-after": "Retry-After", "badjson": "did not answer with JSON", "html": "did not answer with JSON",
    "classes": "expected (4, 2)", "rows": "expected (4, 2)", "nan": "not probabilities",
    "close": "RemoteProtocolError", "trickle": "timed out", "label": "not one of the target's classes",
    "basic": "not one of the target's classes", "big": "max_response_bytes",
}
ATTACK_MODES = {"e500": "HTTP 500", "badjson": "did not answer with JSON", "label": "probabilities"}


def _policy(tmp: Path, port: int, mode: str) -> Path:
    label = mode in ("label", "basic")
    userinfo = f"user:{PASSWORD}@" if mode == "basic" else ""
    http: dict[str, Any] = {"auth_env": ENV, "auth_header": "X-Api-Key" if mode == "basic" else "Authorization",
                            "auth_prefix": "" if mode == "basic" else "Bearer ", "timeout": 0.5, "retries": 1,
                            "backoff": 0.01, "max_backoff": 1, "max_response_bytes": 2000,
                            ("label_path" if label else "probabilities_path"): "labels" if label else "probabilities"}
    attack = {"attack": "hopskipjump", "params": {"max_queries": 20}} if label else \
        {"attack": "square", "eps": [0.1], "params": {"max_queries": 5}}
    policy = {"version": 1, "name": f"leak {mode}",
              "target": {"model": f"http:http://{userinfo}127.0.0.1:{port}/{mode}?api_key={QUERY_TOKEN}&v=1",
                         "classes": [0, 1], "http": http},
              "data": {"source": f"npz:{tmp / 'data.npz'}"},
              "checks": [{"name": "probe", "kind": "evasion", **attack}],
              "output": {"dir": str(tmp / mode), "formats": ["json", "html", "junit", "sarif"]}}
    path = tmp / f"{mode}.yaml"
    path.write_text(json.dumps(policy))  # JSON is YAML
    return path


DRIVER = textwrap.dedent("""
    import json, os, sys
    from bastion.cli.main import main
    runs = json.loads(sys.argv[1])
    saved = os.dup(1), os.dup(2)
    for run in runs:
        with open(run["stdout"], "wb") as out, open(run["stderr"], "wb") as err:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
            sys.argv = ["bastion", *run["args"]]
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(saved[0], 1); os.dup2(saved[1], 2)
        print(code, flush=True)
""")


def _leaks(text: str) -> list[str]:
    """Every 8-character piece of a secret found in ``text`` (also with line breaks removed)."""
    squeezed = "".join(text.split())
    return sorted({s[i:i + 8] for s in SECRETS for i in range(len(s) - 7)
                   if s[i:i + 8] in text or s[i:i + 8] in squeezed})


def _outputs(run: dict[str, Any]) -> dict[str, str]:
    files = {name: Path(run[name]).read_text(errors="replace") for name in ("stdout", "stderr")}
    out = run.get("out")
    if out:
        for f in ("report.json", "report.html", "junit.xml", "report.sarif"):
            files[f] = (Path(out) / f).read_text(errors="replace")
    return files


def test_no_secret_leaks_on_any_http_failure_path(hostile: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.random((4, 3)).astype(np.float32), y=np.array([0, 1, 0, 1]))
    runs: list[dict[str, Any]] = []
    for mode in SCAN_MODES:
        json_out = ["--json"] if mode == "html" else []  # report.json on stdout too
        runs.append({"mode": mode, "args": ["-v", "scan", str(_policy(tmp_path, hostile, mode)), *json_out],
                     "out": str(tmp_path / mode)})
    for mode in (*ATTACK_MODES, "ok"):
        target = f"http:http://user:{PASSWORD}@127.0.0.1:{hostile}/{mode}?api_key={QUERY_TOKEN}"
        runs.append({"mode": f"attack-{mode}", "args": ["-v", "attack", "--target", target, "--data",
                                                        f"npz:{tmp_path / 'data.npz'}", "--attack", "square",
                                                        "--eps", "0.1", "--param", "max_queries=3", "--json"]})
    for i, run in enumerate(runs):
        run["stdout"], run["stderr"] = str(tmp_path / f"{i}.out"), str(tmp_path / f"{i}.err")
    env = {**os.environ, ENV: TOKEN, "COLUMNS": "300", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(runs)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not _leaks(proc.stdout + proc.stderr)
    for run, code in zip(runs, proc.stdout.split(), strict=True):
        run["code"] = int(code)
        files = _outputs(run)
        for name, text in files.items():
            assert not _leaks(text), f"{run['mode']}: {_leaks(text)} leaked into {name}"
        mode = run["mode"]
        if mode == "attack-ok":  # the spec's credentials are masked, not dropped: the report stays useful
            assert run["code"] == 0 and "api_key=***" in files["stdout"], files["stderr"][-2000:]
        elif mode.startswith("attack-"):
            assert run["code"] == 3, (mode, files["stderr"][-2000:])
            assert ATTACK_MODES[mode.removeprefix("attack-")] in files["stderr"], (mode, files["stderr"][-2000:])
        else:
            report = json.loads(files["report.json"])
            probe = report["checks"][0]
            assert probe["status"] == "error" and run["code"] == 3, (mode, run["code"], probe)
            assert report["verdict"] == "fail", mode  # an errored check never looks like a pass
            assert SCAN_MODES[mode] in probe["reason"], (mode, probe["reason"])
            assert "api_key=***" in report["target"]["spec"] and "api_key=***" in files["stderr"]
            if mode == "html":
                assert json.loads(files["stdout"])["checks"][0]["status"] == "error"


def test_the_console_script_keeps_an_echoed_authorization_header_out(hostile: int, tmp_path: Path) -> None:
    """The headline case, through the installed ``bastion`` executable."""
    exe = shutil.which("bastion", path=str(Path(sys.executable).parent)) or shutil.which("bastion")
    assert exe, "the bastion console script is not installed"
    np.savez(tmp_path / "data.npz", x=np.full((4, 3), 0.5, np.float32), y=np.array([0, 1, 0, 1]))
    proc = subprocess.run([exe, "-v", "scan", str(_policy(tmp_path, hostile, "label"))], capture_output=True,
                          text=True, env={**os.environ, ENV: TOKEN, "COLUMNS": "300"}, cwd=tmp_path, timeout=120)
    texts = {"stdout": proc.stdout, "stderr": proc.stderr, **{f.name: f.read_text() for f in (tmp_path / "label").iterdir()}}
    assert set(texts) >= {"report.json", "report.html", "junit.xml", "report.sarif"}
    for name, text in texts.items():
        assert not _leaks(text), f"{_leaks(text)} leaked into {name}"
    assert proc.returncode == 3, proc.stderr[-2000:]
    reason = json.loads(texts["report.json"])["checks"][0]["reason"]
    assert "'Bearer ***'" in reason, reason  # masked where it stood, not silently dropped
