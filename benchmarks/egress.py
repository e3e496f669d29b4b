"""Export throughput of one large file (``python -m benchmarks.egress [--mib 200] [--runs 5]``).

Ours: the extension's own code path for an export request
(:func:`egress_extension.exports.submit_export`): confine and open the file, snapshot it
(size + SHA-256 and the airlock's byte check that a .csv is UTF-8 text, one read pass),
declare it, stream it from the same descriptor over loopback HTTP to the real hub-side ``sde``
service in another process (its app from ``sde_spawner.services.app`` over a scratch SQLite
registry, with the test hub from ``sde_spawner.checking.testing``), which hashes and checks
every byte again as it arrives, writes the blob, fsyncs it and records it, and submit. The
file is a CSV of random digits.

Baseline, in the same run on the same file: ``sha256sum FILE`` followed by ``cp FILE COPY``
(the shell way to take a checksum and a copy; no fsync, no network, no second hash).

Runs alternate (ours, baseline, ours, ...) ``--runs`` times; the median of each is reported.
``--receiver loopback`` swaps the service for a bare receiver that only hashes (to separate
the service's own cost). Before the result, the checker's side of the same export is shown
for the record: the safe preview of a large notebook against plain nbconvert (the figure of
its own is ``python -m benchmarks.render``).

The last line is ``ratio=<ours throughput / baseline throughput>`` (goal: >= 0.8).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from egress_extension.exports import FileRequest, submit_export
from egress_extension.files import ExportPolicy
from egress_extension.service import ExportService
from sde_airlock.rules import ExportRules

PREFIX = "/services/sde/"
TOKEN = "bench-token"  # noqa: S105 - a loopback-only test token


class Receiver(BaseHTTPRequestHandler):
    """The export API's shape (create, upload, submit); uploads are hashed and checked."""

    protocol_version = "HTTP/1.1"
    declared: dict[int, str] = {}

    def log_message(self, format, *args):  # quiet
        return

    def _reply(self, status: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_POST(self):
        if self.path == f"{PREFIX}api/exports":
            files = json.loads(self._body())["files"]
            Receiver.declared = {i: f["sha256"] for i, f in enumerate(files)}
            uploads = [
                {"index": i, "url": f"{PREFIX}api/exports/1/files/{i}"} for i in range(len(files))
            ]
            self._reply(201, {"id": 1, "version": 1, "state": "draft", "uploads": uploads})
        elif self.path.endswith("/submit"):
            self._body()
            self._reply(200, {"id": 1, "state": "submitted", "version": 1})
        else:
            self._reply(404, {"message": "no such endpoint"})

    def do_PUT(self):
        index = int(self.path.rsplit("/", 1)[1])
        remaining = int(self.headers["Content-Length"])
        digest = hashlib.sha256()
        buf = memoryview(bytearray(8 * 1024 * 1024))
        while remaining:
            n = self.rfile.readinto(buf[: min(len(buf), remaining)])
            if not n:
                break
            digest.update(buf[:n])
            remaining -= n
        if remaining or digest.hexdigest() != Receiver.declared.get(index):
            self._reply(400, {"message": "uploaded bytes do not match the declared sha256"})
            return
        self._reply(200, {"id": 1, "index": index, "sha256": digest.hexdigest()})


def serve(port_queue) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    port_queue.put(server.server_address[1])
    server.serve_forever()


def serve_real_service(port_queue, state: str) -> None:
    """The real `sde` service app on loopback, its hub a token table (alice, project p1)."""
    from tornado.netutil import bind_sockets

    from sde_spawner.checking import testing
    from sde_spawner.services.app import ServiceSettings, http_server, make_app

    sessionmaker = testing.make_db(state)
    testing.open_workspace(sessionmaker, "alice", testing.PROJECT, server="p1")
    hub_auth = testing.FakeHubOAuth({TOKEN: testing.server_token_model("alice", "p1")})
    settings = ServiceSettings.from_env(
        prefix=PREFIX,
        bind_ip="127.0.0.1",
        port=0,
        db_url=f"sqlite:///{state}/registry.sqlite",
        state_dir=state,
    )

    async def run() -> None:
        server = http_server(make_app(settings, hub_auth=hub_auth))
        sockets = bind_sockets(0, "127.0.0.1")
        server.add_sockets(sockets)
        port_queue.put(sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(run())


def csv_block(size: int) -> bytes:
    """``size`` bytes of CSV rows (random digits), ending at a row's end."""
    digits = os.urandom(size // 2).hex().encode()
    rows = [b"%s,%s,%s\n" % (digits[i : i + 8], digits[i + 8 : i + 12], digits[i + 12 : i + 15])
            for i in range(0, len(digits) - 15, 16)]  # fmt: skip
    return b"".join(rows)[:size].rsplit(b"\n", 1)[0] + b"\n"


def ours(service: ExportService, policy: ExportPolicy, name: str) -> float:
    started = time.perf_counter()
    result = asyncio.run(
        submit_export(service, policy, [FileRequest(name, "benchmark")], "benchmark")
    )
    elapsed = time.perf_counter() - started
    assert result["state"] == "submitted", result
    return elapsed


def baseline(path: Path, copy: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["sha256sum", str(path)], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cp", str(path), str(copy)], check=True)
    elapsed = time.perf_counter() - started
    copy.unlink()
    return elapsed


def render_record(cells: int, runs: int = 3) -> None:
    """The checker's side for the record: safe preview vs plain nbconvert of one notebook."""
    from benchmarks.render import compare, make_notebook

    data = make_notebook(cells)
    safe, plain = compare(data, runs)
    print(
        f"notebook preview ({len(data) // 1024} KiB, {cells * 2} cells): safe {safe * 1000:.0f} ms"
        f" vs plain nbconvert {plain * 1000:.0f} ms (x{safe / plain:.2f}; benchmarks.render)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=200, help="file size in MiB (default 200)")
    parser.add_argument("--runs", type=int, default=5, help="runs of each (default 5)")
    parser.add_argument(
        "--cells", type=int, default=40, help="code cells of the rendered notebook (default 40)"
    )
    parser.add_argument(
        "--receiver",
        choices=("loopback", "service"),
        default="service",
        help="upload to the real sde service (default) or a loopback receiver that only hashes",
    )
    args = parser.parse_args(argv)
    if not shutil.which("sha256sum"):
        raise SystemExit("sha256sum is needed for the baseline")

    size = args.mib * 1024 * 1024
    ctx = multiprocessing.get_context("fork")
    ports = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="sde-bench-egress-") as tmp:
        if args.receiver == "service":
            state = Path(tmp) / "service"
            state.mkdir()
            receiver = ctx.Process(target=serve_real_service, args=(ports, str(state)), daemon=True)
        else:
            receiver = ctx.Process(target=serve, args=(ports,), daemon=True)
        receiver.start()
        port = ports.get(timeout=30)
        try:
            home = Path(tmp) / "home"
            home.mkdir()
            path = home / "cohort_summary.csv"
            with open(path, "wb") as fh:  # text: both sides check that a .csv's bytes are
                block = csv_block(8 * 1024 * 1024)
                for _ in range(size // len(block)):
                    fh.write(block)
                fh.write(block[: size % len(block)])
            policy = ExportPolicy(root=str(home), rules=ExportRules(max_file_bytes=size))
            service = ExportService(f"http://127.0.0.1:{port}{PREFIX}", TOKEN)
            print(
                f"file: {args.mib} MiB; {args.receiver} receiver on 127.0.0.1:{port} (own process)"
            )
            ours_times, base_times = [], []
            for i in range(args.runs):
                ours_times.append(ours(service, policy, path.name))
                base_times.append(baseline(path, Path(tmp) / "copy.csv"))
                print(
                    f"run {i + 1}: ours {ours_times[-1]:.3f} s, sha256sum+cp {base_times[-1]:.3f} s"
                )
        finally:
            receiver.terminate()
            receiver.join(5)
    render_record(args.cells)
    mib = size / (1024 * 1024)
    ours_rate = mib / statistics.median(ours_times)
    base_rate = mib / statistics.median(base_times)
    print(f"ours (snapshot + sha256 + upload + submit): {ours_rate:,.0f} MiB/s")
    print(f"baseline (sha256sum + cp): {base_rate:,.0f} MiB/s")
    print(f"ratio={ours_rate / base_rate:.2f}")


if __name__ == "__main__":
    main()
