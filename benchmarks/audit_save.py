"""The overhead the audit trail adds to saving a file in a workspace server.

Two real Jupyter servers on loopback over the same kind of home directory: one with
``egress_extension`` (every save becomes a ``file.saved`` event, queued and shipped to a
loopback receiver standing in for the hub-side service), one with the extension switched off.
Saves through the contents API alternate between them; the figure is the ratio of median
save times. Used by :mod:`benchmarks.audit`, whose last line it provides.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from tests.support import free_port, wait_for

TOKEN = "bench-token"  # noqa: S105 - a throwaway token for loopback servers


class _Receiver(BaseHTTPRequestHandler):
    received = 0

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        n = len(body.get("events", []))
        type(self).received += n
        out = json.dumps({"accepted": n}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def _server(root: str, conf: str, port: int, audited: bool, receiver_url: str) -> subprocess.Popen:
    env = dict(os.environ, JUPYTERHUB_API_TOKEN=TOKEN, SDE_SERVICE_URL=receiver_url)
    args = [
        sys.executable,
        "-m",
        "jupyter_server",
        "--no-browser",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--ServerApp.root_dir={root}",
        f"--IdentityProvider.token={TOKEN}",
        "--allow-root",  # the benchmark runs as root like the rest of CI; servers stay on loopback
    ]
    if not audited:
        off = os.path.join(conf, "extension-off.json")
        with open(off, "w") as fh:
            json.dump({"ServerApp": {"jpserver_extensions": {"egress_extension": False}}}, fh)
        args.append(f"--config={off}")
    log = open(os.path.join(conf, f"server-{port}.log"), "w")  # noqa: SIM115 - child's stdout
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)


def measure(saves: int = 300) -> dict:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    receiver_url = f"http://127.0.0.1:{httpd.server_address[1]}/services/sde/"
    procs, urls = [], {}
    with (
        tempfile.TemporaryDirectory() as a,
        tempfile.TemporaryDirectory() as b,
        tempfile.TemporaryDirectory() as conf,
    ):
        try:
            for audited, root in ((True, a), (False, b)):
                port = free_port()
                procs.append(_server(root, conf, port, audited, receiver_url))
                urls[audited] = f"http://127.0.0.1:{port}"
            s = requests.Session()
            s.headers["Authorization"] = f"token {TOKEN}"
            for url in urls.values():
                wait_for(lambda u=url: s.get(f"{u}/api/status", timeout=2).ok, 60, "server")
            ext = s.get(f"{urls[True]}/egress/api/status", timeout=5)
            assert ext.ok, "the audited server must run egress_extension"
            assert not s.get(f"{urls[False]}/egress/api/status", timeout=5).ok
            body = {"type": "file", "format": "text", "content": "x = 1\n" * 200}
            times = {True: [], False: []}
            for i in range(saves):
                for audited in (True, False) if i % 2 else (False, True):
                    body["content"] = f"# save {i}\n" + "x = 1\n" * 200
                    t0 = time.perf_counter()
                    r = s.put(f"{urls[audited]}/api/contents/analysis.py", json=body, timeout=10)
                    times[audited].append(time.perf_counter() - t0)
                    r.raise_for_status()
            wait_for(lambda: _Receiver.received >= saves, 30, "the events to arrive")
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
            httpd.shutdown()
    return {
        "audited_p50": statistics.median(times[True]),
        "plain_p50": statistics.median(times[False]),
        "events_received": _Receiver.received,
        "saves": saves,
    }
