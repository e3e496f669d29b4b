"""A Docker engine of a test's own: its own ``dockerd`` in its own network namespace.

The engine has its own data root, exec root, socket, pid file and managed containerd, and
runs in a network namespace of the test's own (started with ``nsenter --net``), so its
iptables rules and bridges stay in that namespace and the machine's shared engine is never
touched. A test may stop it (SIGTERM, or SIGKILL: a crash) and start it again on the same
data root: an engine restart, with the machine's engine untouched.

Used by the Swarm lab (``tests/swarm/lab.py``: one engine per node) and the engine-restart
fault test (``tests/docker/test_engine_restart.py``). Everything is stopped by PID.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


def run(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


def prerequisites(what: str, probe_ns: str) -> str:
    """Why this machine cannot run a private engine, or '' when it can (``what`` names the
    test tier in the message; ``probe_ns`` is a namespace name of the caller's prefix)."""
    if os.geteuid() != 0:
        return f"{what} needs root (network namespaces and its own dockerd)"
    for tool in ("dockerd", "containerd", "ip", "iptables", "docker", "nsenter"):
        if not shutil.which(tool):
            return f"{what} needs {tool} on PATH"
    res = run("ip", "netns", "add", probe_ns, check=False)
    if res.returncode != 0:
        return f"cannot create a network namespace: {res.stderr.strip()}"
    run("ip", "netns", "del", probe_ns, check=False)
    return ""


@dataclass
class Engine:
    """One private ``dockerd``: in network namespace ``netns``, its files under ``dir``."""

    netns: str
    dir: Path
    #: dockerd flags besides the ones that make it private (data root, socket, ...)
    flags: tuple[str, ...] = ()
    pid: int = 0
    proc: subprocess.Popen | None = None
    log_file: object = None
    starts: int = field(default=0)

    @property
    def sock(self) -> str:
        return f"unix://{self.dir / 'docker.sock'}"

    def docker(self, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return run("docker", "-H", self.sock, *args, check=check, **kw)

    def client(self, timeout: int = 120):
        import docker

        return docker.DockerClient(base_url=self.sock, timeout=timeout)

    def start(self, timeout: float = 60) -> float:
        """Start dockerd (again: the same data root) and wait until it answers; seconds."""
        t0 = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "daemon.json"
        config.write_text(json.dumps({}))  # not the machine's /etc/docker/daemon.json
        log = self.log_file = open(self.dir / "dockerd.log", "a")  # noqa: SIM115 - closed in stop
        proc = subprocess.Popen(
            [
                # nsenter, not `ip netns exec`: that remounts /sys and hides the cgroups
                "nsenter", f"--net=/run/netns/{self.netns}", "dockerd",
                "--config-file", str(config),
                "--data-root", str(self.dir / "data"),
                "--exec-root", str(self.dir / "exec"),
                "--pidfile", str(self.dir / "docker.pid"),
                "-H", self.sock,
                *self.flags,
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.proc, self.pid = proc, proc.pid  # nsenter execs dockerd: the same PID
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"dockerd in {self.netns} exited: {self.log()[-2000:]}")
            if self.docker("version", check=False).returncode == 0:
                return time.monotonic() - t0
            time.sleep(0.1)
        raise RuntimeError(f"dockerd in {self.netns} did not answer: {self.log()[-2000:]}")

    def send(self, sig: int) -> None:
        """Send ``sig`` to this engine's dockerd (only if it is still ours)."""
        pid = self.pid or self._pid_from_file()
        if pid and pid in pids_under(self.dir):
            self.pid = pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _pid_from_file(self) -> int:
        try:
            return int((self.dir / "docker.pid").read_text().strip())
        except (OSError, ValueError):
            return 0

    def wait_stopped(self, timeout: float = 30) -> float:
        """Wait for dockerd to exit (SIGKILL after ``timeout``); seconds waited."""
        t0 = time.monotonic()
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        elif self.pid:
            deadline = time.monotonic() + timeout
            with contextlib.suppress(ProcessLookupError):
                while time.monotonic() < deadline:
                    os.kill(self.pid, 0)
                    time.sleep(0.1)
                os.kill(self.pid, signal.SIGKILL)
        self.proc, self.pid = None, 0
        # dockerd's containerd dies with it (parent-death signal), but until it is reaped a
        # dockerd started again finds its pid alive, waits for it and gives up
        # ("containerd is still running" ... "timeout waiting for containerd to start").
        containerd = self.dir / "exec" / "containerd" / "containerd.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(containerd.read_text().strip())
            deadline = time.monotonic() + timeout
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
        return time.monotonic() - t0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> float:
        """Stop dockerd by PID (SIGTERM: it stops its containers first; SIGKILL: a crash,
        the containers' shims and processes live on); seconds until it exited."""
        self.send(sig)
        return self.wait_stopped(timeout)

    def kill_leftovers(self) -> None:
        """SIGKILL what is left of this engine (containerd, shims) after dockerd is gone."""
        for pid in pids_under(self.dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def log(self) -> str:
        try:
            return (self.dir / "dockerd.log").read_text(errors="replace")
        except OSError:
            return ""


def stop_all(engines: list[Engine], timeout: float = 15) -> None:
    """Stop several engines at once (each takes seconds), then what they left."""
    for engine in engines:
        engine.send(signal.SIGTERM)
    for engine in engines:
        engine.wait_stopped(timeout)
    for engine in engines:
        engine.kill_leftovers()


def unmount_under(root: Path) -> None:
    """Unmount everything under ``root`` (overlays, netns bind mounts, the tmpfs itself),
    deepest first, and remove the directory."""
    if not root.exists():
        return
    mounts = [
        line.split()[1]
        for line in Path("/proc/mounts").read_text().splitlines()
        if line.split()[1].startswith(str(root))
    ]
    for mnt in sorted(mounts, key=len, reverse=True):
        run("umount", "-l", mnt, check=False)
    shutil.rmtree(root, ignore_errors=True)  # empty once the tmpfs is gone


def mount_tmpfs(root: Path, size: str, name: str) -> None:
    root.mkdir(parents=True)
    run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", name, str(root))


def load_image(image: str, engines: list[Engine]) -> None:
    """The machine engine's image, loaded into every engine (one save, piped to each)."""
    save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
    loaders = [
        subprocess.Popen(
            ["docker", "-H", e.sock, "load", "-q"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for e in engines
    ]
    assert save.stdout is not None
    while chunk := save.stdout.read(1 << 20):
        for loader in loaders:
            loader.stdin.write(chunk)
    save.wait()
    save.stdout.close()
    for loader in loaders:
        loader.stdin.close()
        err = loader.stderr.read().decode()
        loader.stderr.close()
        if loader.wait() != 0:
            raise RuntimeError(f"docker load {image}: {err}")


def pids_under(directory: Path) -> list[int]:
    """Processes whose command line names ``directory`` (an engine's dockerd, containerd
    and shims)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(directory) in cmdline:
            out.append(int(entry.name))
    return out


_CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def in_netns(name: str):
    """Run the calling thread in network namespace ``name`` (``setns``; threads and
    processes started meanwhile inherit it; sockets keep the namespace they were made in)."""
    libc = ctypes.CDLL(None, use_errno=True)
    back = os.open(f"/proc/{os.getpid()}/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(target, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        try:
            yield
        finally:
            if libc.setns(back, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(target)
        os.close(back)
