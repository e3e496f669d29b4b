"""The locked room's kernel limits, exercised from inside a real workspace rather than read
from its configuration: a fork bomb stops at the pids limit, a memory hog is killed by the
room's memory cgroup, raw and ICMP sockets cannot be opened, and while one room is attacked
the hub and another person's room carry on answering.

The attacks run in a room of their own (person ``rita`` on project ``attack-limits`` with a
small memory limit), so alice's room, which later tests use, is only ever the bystander. Each
attack has a control: the same program in a throwaway container of the same image without
that one limit does get through, so a probe that cannot see a breach cannot pass by accident.
Both are bounded in count and time (``timeout`` inside the container, children that exit on
their own): the test machine is shared.
"""

from __future__ import annotations

import json
import threading
import uuid

import pytest

from sde_spawner.containers import workspace_names
from tests.support import User

pytestmark = pytest.mark.docker

PROJECT = "attack-limits"
NEIGHBOUR_PROJECT = "diabetes-outcomes"
MEMORY = "384m"
MEMORY_MIB = 384

# Forks up to N children that sleep (at most HOLD + 10 s, then exit on their own), holds them
# for HOLD seconds, kills them and reports how many it got and why it stopped. A bounded bomb:
# what an unbounded one would do to the process table, without the CPU it would burn.
BOMB = r"""
import json, os, signal, sys, time
n, hold = int(sys.argv[1]), float(sys.argv[2])
kids, error = [], None
for _ in range(n):
    try:
        pid = os.fork()
    except OSError as e:
        error = f"{type(e).__name__}:{e.errno}"
        break
    if pid == 0:
        time.sleep(hold + 10)
        os._exit(0)
    kids.append(pid)
time.sleep(hold)
for pid in kids:
    os.kill(pid, signal.SIGKILL)
for pid in kids:
    os.waitpid(pid, 0)
print(json.dumps({"started": len(kids), "error": error}))
"""

# Allocates and touches MiB in 16 MiB steps, then reports; the kernel's OOM killer ends it
# with SIGKILL (exit 137 under `timeout`) when its cgroup runs out.
HOG = r"""
import sys, time
target, chunks, got = int(sys.argv[1]), [], 0
while got < target:
    chunks.append(b"\x01" * (16 << 20))
    got += 16
    time.sleep(0.01)
print(f"allocated {got} MiB")
"""

SOCKETS = r"""
import json, socket
out = {}
for name, args in {
    "raw_icmp": (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    "raw_tcp": (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP),
    "ping": (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP),
    "packet": (socket.AF_PACKET, socket.SOCK_RAW, 0x0300),
}.items():
    try:
        socket.socket(*args).close()
        out[name] = "open"
    except OSError as e:
        out[name] = f"{type(e).__name__}:{e.errno}"
print(json.dumps(out))
"""


def run(container, code: str, *args: str, user: str = "1000:1000", seconds: int = 60):
    """``timeout SECONDS python3 -c CODE ARGS`` in the container: (exit code, output)."""
    res = container.exec_run(
        ["timeout", str(seconds), "python3", "-c", code, *args], user=user, workdir="/tmp"
    )
    return res.exit_code, res.output.decode(errors="replace")


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def rita(hub):
    hub.add_project(PROJECT, ["rita"], memory=MEMORY, agreement="DSA-T-LIMITS")
    user = User(hub, "rita")
    assert user.logged_in, hub.log_tail()
    user.ensure_running(PROJECT)
    yield user
    user.ensure_stopped(PROJECT)


@pytest.fixture(scope="module")
def rita_ws(hub, rita, docker_client):
    return docker_client.containers.get(workspace_names("rita", PROJECT, hub.prefix).container)


@pytest.fixture(scope="module")
def alice(hub):
    user = User(hub, "alice")
    user.ensure_running(NEIGHBOUR_PROJECT)
    return user


@pytest.fixture
def plain_box(docker_client, notebook_image):
    """Control: the same image, the same user and no capabilities, with none of the room's
    kernel limits (no pids or memory limit, Docker's default sysctls), on no network."""
    boxes = []

    def make(**extra):
        kw = {"user": "1000:1000", "cap_drop": ["ALL"], "network_mode": "none", **extra}
        box = docker_client.containers.run(
            notebook_image,
            ["sleep", "300"],
            name=f"sdetest-limits-{uuid.uuid4().hex[:6]}",
            detach=True,
            **kw,
        )
        boxes.append(box)
        return box

    yield make
    for box in boxes:
        box.remove(force=True)


class Bystanders:
    """Polls the hub API and alice's room while an attack runs elsewhere."""

    def __init__(self, hub, alice: User):
        self.hub, self.alice = hub, alice
        self.answers: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        import requests

        while not self._stop.is_set():
            hub_api = requests.get(f"{self.hub.url}/hub/api/", timeout=10).status_code
            room = self.alice.workspace_get(NEIGHBOUR_PROJECT, "api/status").status_code
            self.answers.append((hub_api, room))
            self._stop.wait(0.3)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join(30)


def assert_room_answers(user: User, project: str) -> None:
    assert user.server(project)["ready"]
    assert user.workspace_get(project, "api/status").status_code == 200


# ---- processes ---------------------------------------------------------------------------
def test_a_fork_bomb_stops_at_the_pids_limit(hub, rita, rita_ws, alice):
    rita_ws.reload()
    limit = rita_ws.attrs["HostConfig"]["PidsLimit"]
    assert limit and limit > 0
    with Bystanders(hub, alice) as watch:
        code, out = run(rita_ws, BOMB, str(2 * limit), "4")
    assert code == 0, out
    result = last_json(out)
    # every task counts (the room's server and its threads too), so fewer than the limit
    assert 0 < result["started"] < limit, result
    assert result["error"] == "BlockingIOError:11", result  # fork: EAGAIN, the pids cgroup
    assert watch.answers and all(a == (200, 200) for a in watch.answers), watch.answers
    assert_room_answers(rita, PROJECT)
    assert_room_answers(alice, NEIGHBOUR_PROJECT)


def test_control_without_the_pids_limit_the_same_bomb_gets_all_its_processes(rita_ws, plain_box):
    limit = rita_ws.attrs["HostConfig"]["PidsLimit"]
    box = plain_box()
    assert not box.attrs["HostConfig"].get("PidsLimit")
    code, out = run(box, BOMB, str(2 * limit), "1")
    assert code == 0, out
    assert last_json(out) == {"started": 2 * limit, "error": None}


# ---- memory ------------------------------------------------------------------------------
def oom_kills(container) -> int:
    """The room's memory cgroup's count of OOM kills (cgroup v1 ``memory.oom_control``)."""
    res = container.exec_run(["cat", "/sys/fs/cgroup/memory/memory.oom_control"])
    if res.exit_code != 0:  # cgroup v2
        res = container.exec_run(["cat", "/sys/fs/cgroup/memory.events"])
    assert res.exit_code == 0, res.output
    fields = dict(line.split() for line in res.output.decode().splitlines())
    return int(fields["oom_kill"])


def test_a_memory_hog_is_killed_by_its_cgroup_while_others_carry_on(hub, rita, rita_ws, alice):
    rita_ws.reload()
    assert rita_ws.attrs["HostConfig"]["Memory"] == MEMORY_MIB << 20
    assert rita_ws.attrs["HostConfig"]["MemorySwap"] == MEMORY_MIB << 20  # no swap to spill to
    kills = oom_kills(rita_ws)
    # control in the same room: a quarter of the limit is allocated and released normally
    code, out = run(rita_ws, HOG, str(MEMORY_MIB // 4))
    assert code == 0 and f"allocated {MEMORY_MIB // 4} MiB" in out, out
    assert oom_kills(rita_ws) == kills

    with Bystanders(hub, alice) as watch:
        code, out = run(rita_ws, HOG, str(2 * MEMORY_MIB))
    assert code == 137 and "allocated" not in out, (code, out)  # SIGKILL, not the timeout (124)
    assert oom_kills(rita_ws) > kills
    assert watch.answers and all(a == (200, 200) for a in watch.answers), watch.answers
    rita_ws.reload()
    assert rita_ws.status == "running"  # the hog died, not the room
    assert_room_answers(rita, PROJECT)
    assert_room_answers(alice, NEIGHBOUR_PROJECT)


def test_control_without_the_memory_limit_the_same_hog_completes(plain_box):
    box = plain_box()
    assert not box.attrs["HostConfig"].get("Memory")
    code, out = run(box, HOG, str(2 * MEMORY_MIB))
    assert code == 0 and f"allocated {2 * MEMORY_MIB} MiB" in out, (code, out)


# ---- raw and ICMP sockets ------------------------------------------------------------------
def test_raw_and_icmp_sockets_cannot_be_opened(rita_ws):
    rita_ws.reload()
    assert rita_ws.attrs["HostConfig"]["Sysctls"]["net.ipv4.ping_group_range"] == "1 0"
    # as the researcher, and as root in the room (no capabilities either way)
    for user in ("1000:1000", "0:0"):
        code, out = run(rita_ws, SOCKETS, user=user)
        assert code == 0, out
        got = last_json(out)
        assert got == {
            "raw_icmp": "PermissionError:1",  # EPERM: no CAP_NET_RAW
            "raw_tcp": "PermissionError:1",
            "ping": "PermissionError:13",  # EACCES: no group in ping_group_range
            "packet": "PermissionError:1",
        }, (user, got)


def test_control_with_net_raw_and_dockers_ping_range_the_sockets_open(plain_box):
    # Docker's default for a container (20.10 and later): every group may open ping sockets
    ping = plain_box()
    code, out = run(ping, SOCKETS)
    assert code == 0, out
    assert last_json(out)["ping"] == "open"
    # with NET_RAW given back (root, as capabilities only reach root in a container)
    raw = plain_box(user="0:0", cap_add=["NET_RAW"])
    code, out = run(raw, SOCKETS, user="0:0")
    assert code == 0, out
    assert last_json(out) == {"raw_icmp": "open", "raw_tcp": "open", "ping": "open",
                              "packet": "open"}  # fmt: skip
