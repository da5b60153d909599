"""HTTP target limits: a 200 MB answer and a trickling answer, bastion's HttpTarget against the
plain httpx reading (``client.post(...)`` then ``json.loads(resp.content)``, what HttpTarget did
before the cap and the whole-request deadline).

A server on 127.0.0.1 answers ``/huge`` with ~200 MB of JSON (no Content-Length, so the size is
only known by reading) and ``/trickle`` with a 60-byte body sent one byte every 0.2 s. Each case
runs in its own child process, so peak RSS is that case's alone; both tools use ``timeout=2``.

Usage: ``python benchmarks/http_limits.py [--mb 200]``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = b'{"probabilities": [' + b"[0.5, 0.5], " * 100_000  # ~1.2 MB of a never-ending array

CHILD = r"""
import json, resource, sys, time
import numpy as np
url, tool = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
try:
    if tool == "httpx":
        import httpx
        json.loads(httpx.Client(timeout=2.0).post(url, json={"inputs": [[0.0, 0.0]]}).content)
    else:
        from bastion.core.spec import InputSpec
        from bastion.core.targets.http_target import HttpTarget
        HttpTarget(url, classes=[0, 1], input_spec=InputSpec(shape=(2,), lower=0.0, upper=1.0),
                   probabilities_path="probabilities", retries=0, timeout=2.0).predict_proba(np.zeros((1, 2), np.float32))
    outcome = "answer accepted"
except Exception as exc:
    outcome = type(exc).__name__
print(json.dumps({"seconds": time.perf_counter() - t0, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "outcome": outcome}))
"""


def serve(mb: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            if self.path == "/trickle":
                self.send_header("Content-Length", "60")
            self.end_headers()
            try:
                if self.path == "/huge":
                    for _ in range(int(mb / 1.2)):
                        self.wfile.write(CHUNK)
                else:
                    for _ in range(60):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        time.sleep(0.2)
            except OSError:  # the client hung up
                pass
            self.close_connection = True

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200)
    args = parser.parse_args()
    httpd = serve(args.mb)
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    print(f"Python {platform.python_version()}, {platform.machine()}; answer of ~{args.mb} MB; timeout 2 s\n")
    print("| case | tool | seconds | peak RSS (MB) | outcome |\n| --- | --- | --- | --- | --- |")
    for case in ("huge", "trickle"):
        for tool in ("httpx", "bastion"):
            out = subprocess.run([sys.executable, "-c", CHILD, f"{base}/{case}", tool], capture_output=True, text=True,
                                 timeout=900)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {case} | {'plain httpx + json.loads' if tool == 'httpx' else 'HttpTarget'} | {r['seconds']:.2f} | "
                  f"{r['rss_mb']:.0f} | {r['outcome']} |")


if __name__ == "__main__":
    main()
