"""How fast a suspension takes effect (``python -m benchmarks.lifecycle``).

A real hub (:class:`tests.support.Hub`: demo seed, its own registry, ports and Docker object
prefix) with its periodic lifecycle sweep set far out (600 s), so only the ``sde`` service's
reaction to the registry change can close the room. Each round: alice starts a workspace,
``sde-admin person suspend alice`` runs, and the time from the start of that command until
the hub reports the server gone is measured; alice is then reactivated. The baseline is the
issue's requirement, 10 s.

The last line is ``ratio=<p50 seconds / 10>`` (target ≤ 1.0, goal ≤ 0.2).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import docker

from tests.conftest import NOTEBOOK_IMAGE, remove_prefixed
from tests.support import Hub, User, wait_for

PROJECT = "diabetes-outcomes"
REQUIRED_SECONDS = 10.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lifecycle", description=__doc__)
    p.add_argument("--runs", type=int, default=5, help="suspensions timed (at least 5)")
    args = p.parse_args(argv)
    client = docker.from_env()
    client.images.get(NOTEBOOK_IMAGE)  # fails early with a clear error when not built
    prefix = f"sdel{uuid.uuid4().hex[:6]}"
    root = Path(tempfile.mkdtemp(prefix="sde-bench-lifecycle-"))
    hub = Hub(root, prefix)
    from sde_spawner import firewall

    took: list[float] = []
    try:
        hub.seed()
        hub.start()
        alice = User(hub, "alice")
        for i in range(max(args.runs, 5)):
            assert alice.spawn_with_form(PROJECT, PROJECT).status_code == 302
            alice.wait_ready(PROJECT)
            start = time.perf_counter()
            res = hub.admin("person", "suspend", "alice", "--reason", f"benchmark round {i}")
            if res.returncode != 0:
                raise RuntimeError(res.stderr)
            wait_for(lambda: alice.server(PROJECT) is None, 120, "the room to close")
            took.append(time.perf_counter() - start)
            print(f"round {i + 1}: suspension to workspace gone {took[-1]:.2f} s", flush=True)
            res = hub.admin("person", "reactivate", "alice", "--reason", "benchmark")
            if res.returncode != 0:
                raise RuntimeError(res.stderr)
    finally:
        hub.stop()
        remove_prefixed(client, prefix)
        firewall.revoke(hub.hub_port)
        firewall.revoke(hub.service_port)
    p50 = statistics.median(took)
    print(
        f"suspend -> workspace gone: p50 {p50:.2f} s, min {min(took):.2f}, max {max(took):.2f} "
        f"over {len(took)} runs (required {REQUIRED_SECONDS:.0f} s)"
    )
    print(f"ratio={p50 / REQUIRED_SECONDS:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
