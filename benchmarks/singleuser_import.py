"""``import jupyterhub.singleuser`` in sde-notebook as built vs. with jupyterhub as released.

``python -m benchmarks.singleuser_import [--runs N]``

The notebook image makes the hub-only imports of jupyterhub lazy at build
(``images/notebook/singleuser_imports.py``), so that the single-user server does not load
SQLAlchemy, Alembic and ``jupyterhub.orm``. The baseline is the same image with the released
jupyterhub wheel reinstalled from the wheelhouse: a throwaway ``sde-notebook:bench-jhorm``
built ``FROM`` the image under test (``sde-notebook:$SDE_IMAGE_TAG``, default latest).

For each image, interleaved (order alternating every round) and ``--runs`` times, in a
container with no network as uid 1000 on a read-only root: the CPU time (``process_time``)
and wall time of ``import jupyterhub.singleuser`` (what ``jupyterhub-singleuser`` runs first),
and how many modules it loaded. The last line is ``ratio=<ours p50 / baseline p50>`` of the
CPU time. The variant image is kept and rebuilt only when the image under test changes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parents[1]
OURS = f"sde-notebook:{os.environ.get('SDE_IMAGE_TAG', 'latest')}"
BASELINE = "sde-notebook:bench-jhorm"
WHEELHOUSE = ROOT / "images" / "notebook" / "wheels"
VARIANT_LABEL = "org.sde-tre.bench-from"
PROBE = (
    "import json, sys, time\n"
    "t, w = time.process_time(), time.perf_counter()\n"
    "import jupyterhub.singleuser\n"
    "cpu, wall = time.process_time() - t, time.perf_counter() - w\n"
    "orm = [m for m in ('sqlalchemy', 'alembic', 'jupyterhub.orm') if m in sys.modules\n"
    "       and type(sys.modules[m]).__name__ != '_LazyModule']\n"
    "print(json.dumps({'cpu': cpu, 'wall': wall, 'modules': len(sys.modules), 'orm': orm}))\n"
)


def ensure_baseline(client: docker.DockerClient) -> None:
    ours = client.images.get(OURS)
    try:
        if client.images.get(BASELINE).labels.get(VARIANT_LABEL) == ours.id:
            return
    except docker.errors.ImageNotFound:
        pass
    wheels = sorted(WHEELHOUSE.glob("jupyterhub-*.whl"))
    if not wheels:
        raise SystemExit(f"no jupyterhub wheel in {WHEELHOUSE} (run scripts/build-images.sh)")
    with tempfile.TemporaryDirectory() as ctx:
        shutil.copy(wheels[-1], ctx)
        Path(ctx, "Dockerfile").write_text(
            f"FROM {OURS}\nUSER root\nCOPY {wheels[-1].name} /tmp/\n"
            f"RUN pip install --no-cache-dir --no-index --no-deps --force-reinstall "
            f"/tmp/{wheels[-1].name} \\\n"
            "    && python -m compileall -q -f --invalidation-mode unchecked-hash \\\n"
            "        /opt/venv/lib/python3*/site-packages/jupyterhub >/dev/null \\\n"
            "    && rm /tmp/*.whl\nUSER 1000:1000\n"
        )
        print(f"building {BASELINE} from {OURS} with {wheels[-1].name} as released", flush=True)
        subprocess.run(
            ["docker", "build", "-q", "--label", f"{VARIANT_LABEL}={ours.id}", "-t", BASELINE, ctx],
            check=True,
            stdout=subprocess.DEVNULL,
        )


def probe(client: docker.DockerClient, image: str) -> dict:
    out = client.containers.run(
        image,
        ["python", "-c", PROBE],
        network_mode="none",
        read_only=True,
        tmpfs={"/tmp": "rw,nosuid,nodev,size=64m"},
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        user="1000",
        remove=True,
    )
    return json.loads(out.decode().strip().splitlines()[-1])


def p(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.singleuser_import")
    ap.add_argument("--runs", type=int, default=10, help="imports per image")
    args = ap.parse_args(argv)
    client = docker.from_env()
    ensure_baseline(client)
    results: dict[str, list[dict]] = {OURS: [], BASELINE: []}
    for i in range(args.runs):
        for image in (OURS, BASELINE) if i % 2 == 0 else (BASELINE, OURS):
            results[image].append(probe(client, image))
    print(f"import jupyterhub.singleuser, {args.runs} runs each, load {os.getloadavg()[0]:.2f}")
    for image, rows in results.items():
        cpu = [r["cpu"] for r in rows]
        wall = [r["wall"] for r in rows]
        print(
            f"  {image:<28} cpu p50={p(cpu, 50):.3f}s p95={p(cpu, 95):.3f}s  "
            f"wall p50={p(wall, 50):.3f}s  modules={rows[0]['modules']}  "
            f"hub ORM loaded: {', '.join(rows[0]['orm']) or 'no'}"
        )
    ours = p([r["cpu"] for r in results[OURS]], 50)
    base = p([r["cpu"] for r in results[BASELINE]], 50)
    print(f"ratio={ours / base:.3f}")


if __name__ == "__main__":
    main()
