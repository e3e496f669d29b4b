"""Workspace start-up: sde-notebook as built vs. with rfc3987-syntax put back.

``python -m benchmarks.image_start [--runs N]``

The notebook image drops ``rfc3987-syntax`` (jsonschema's optional "iri" format checker, which
compiles Lark grammars at import). The baseline is the same image with it reinstalled from the
wheelhouse: a throwaway ``sde-notebook:bench-rfc3987`` built ``FROM sde-notebook:latest``.

Measured, for each image, interleaved (order alternating every round) and ``--runs`` times:
  * start-to-ready: wall time from ``docker run`` of ``jupyter server`` under the workspace
    hardening (read-only root, tmpfs /tmp, no capabilities, no-new-privileges, uid 1000) until
    ``GET /api/status`` with the token answers 200, polled every 20 ms at the container's
    address on a network this run creates;
  * import time of ``jupyter_server.serverapp, jupyterlab`` inside a hardened container.
Prints p50/p95 per image; the last line is ``ratio=<ours p50 / baseline p50>`` for
start-to-ready. Containers and the network (``sdebench-``) are removed at the end; the variant
image is kept and rebuilt only when sde-notebook:latest changes.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parents[1]
OURS = "sde-notebook:latest"
BASELINE = "sde-notebook:bench-rfc3987"
WHEELHOUSE = ROOT / "images" / "notebook" / "wheels"
PORT = 8888
TOKEN = uuid.uuid4().hex
HARDENING = {
    "read_only": True,
    "tmpfs": {"/tmp": "rw,nosuid,nodev,size=256m"},
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
    "user": "1000",
}
VARIANT_LABEL = "org.sde-tre.bench-from"
VARIANT_DOCKERFILE = f"""\
FROM {OURS}
USER root
COPY wheels/ /tmp/wheels/
RUN pip install --no-cache-dir --no-index --find-links /tmp/wheels rfc3987-syntax \\
    && python -m compileall -q --invalidation-mode unchecked-hash \\
        /opt/venv/lib/python3*/site-packages/rfc3987_syntax >/dev/null \\
    && python -c "import rfc3987_syntax" \\
    && rm -rf /tmp/wheels
USER 1000:1000
"""
IMPORT_SCRIPT = (
    "import time; t = time.perf_counter(); import jupyter_server.serverapp, jupyterlab; "
    "print(time.perf_counter() - t)"
)


def ensure_images(client: docker.DockerClient) -> None:
    try:
        client.images.get(OURS)
    except docker.errors.ImageNotFound:
        print(f"{OURS} missing: running scripts/build-images.sh", flush=True)
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "build-images.sh")],
            check=True,
            env={**os.environ, "IMAGES": "notebook", "PYTHON": sys.executable},
        )
    ours_id = client.images.get(OURS).id
    with contextlib.suppress(docker.errors.ImageNotFound):
        if client.images.get(BASELINE).labels.get(VARIANT_LABEL) == ours_id:
            print(f"{BASELINE}: up to date", flush=True)
            return
        client.images.remove(BASELINE)  # stale: made from an older sde-notebook
    wheels = sorted(WHEELHOUSE.glob("rfc3987_syntax-*.whl")) + sorted(WHEELHOUSE.glob("lark-*.whl"))
    if not wheels:
        raise SystemExit(f"no rfc3987_syntax wheel in {WHEELHOUSE}: run scripts/build-images.sh")
    with tempfile.TemporaryDirectory() as context:
        (Path(context) / "wheels").mkdir()
        for wheel in wheels:
            shutil.copy(wheel, Path(context) / "wheels")
        (Path(context) / "Dockerfile").write_text(VARIANT_DOCKERFILE)
        print(f"building {BASELINE} FROM {OURS}", flush=True)
        client.images.build(path=context, tag=BASELINE, labels={VARIANT_LABEL: ours_id}, rm=True)


def ready(address: str) -> bool:
    conn = http.client.HTTPConnection(address, PORT, timeout=2)
    try:
        conn.request("GET", "/api/status", headers={"Authorization": f"token {TOKEN}"})
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def start_to_ready(client: docker.DockerClient, image: str, network: str, timeout=60.0):
    """Seconds from ``docker run`` to the server answering; the container is removed."""
    start = time.perf_counter()
    container = client.containers.run(
        image,
        [
            "jupyter",
            "server",
            "--ip=0.0.0.0",
            f"--port={PORT}",
            f"--IdentityProvider.token={TOKEN}",
            "--ServerApp.open_browser=False",
        ],
        name=f"sdebench-start-{uuid.uuid4().hex[:8]}",
        detach=True,
        network=network,
        **HARDENING,
    )
    try:
        container.reload()
        address = container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]
        while time.perf_counter() - start < timeout:
            if ready(address):
                return time.perf_counter() - start
            time.sleep(0.02)
        raise RuntimeError(f"{image} not ready after {timeout} s")
    finally:
        container.remove(force=True)


def import_seconds(client: docker.DockerClient, image: str) -> float:
    out = client.containers.run(
        image,
        ["python", "-c", IMPORT_SCRIPT],
        name=f"sdebench-import-{uuid.uuid4().hex[:8]}",
        network_mode="none",
        remove=True,
        **HARDENING,
    )
    return float(out.decode().strip().splitlines()[-1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def report(name: str, values: list[float]) -> None:
    print(
        f"{name:<48} n={len(values):<3} p50={statistics.median(values):.3f}s "
        f"p95={percentile(values, 0.95):.3f}s min={min(values):.3f}s max={max(values):.3f}s",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per image (>= 8)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per image first")
    args = parser.parse_args(argv)
    if args.runs < 8:
        parser.error("--runs must be at least 8")

    client = docker.from_env()
    ensure_images(client)
    images = {"ours (no rfc3987_syntax)": OURS, "baseline (with rfc3987_syntax)": BASELINE}
    starts: dict[str, list[float]] = {name: [] for name in images}
    imports: dict[str, list[float]] = {name: [] for name in images}
    network = client.networks.create(f"sdebench-net-{uuid.uuid4().hex[:8]}", driver="bridge")
    try:
        for _ in range(args.warmup):
            for image in images.values():
                start_to_ready(client, image, network.name)
        for round_ in range(args.runs):
            order = list(images.items())
            if round_ % 2:
                order.reverse()
            for name, image in order:
                starts[name].append(start_to_ready(client, image, network.name))
                imports[name].append(import_seconds(client, image))
    finally:
        network.remove()

    for name in images:
        report(f"import {name}", imports[name])
    for name in images:
        report(f"start-to-ready {name}", starts[name])
    ours, baseline = (statistics.median(starts[name]) for name in images)
    print(f"ratio={ours / baseline:.3f}")


if __name__ == "__main__":
    main()
