"""Test support for the fault tests: a PostgreSQL of the test's own, a small filesystem of the
test's own, and the real ``sde`` service app on a loopback port.

* :class:`OwnPostgres` is a PostgreSQL cluster ``initdb``-ed into a temporary directory and
  run as the ``postgres`` user on a free port of 127.0.0.1, so a test can restart or kill it
  without touching the shared server on 5432.
* :class:`Tmpfs` mounts a tmpfs of a given size (the blob store's disk, to fill up).
* :class:`ServiceThread` serves the real service application (``make_app`` and
  ``http_server`` of :mod:`sde_spawner.services.app`, every handler, the real database) on its
  own event loop in a thread; only the hub's answer to "whose token is this?" is a table
  (:class:`~sde_spawner.checking.testing.FakeHubOAuth`). It can be stopped and started again
  on the same port (an outage, as the workspace sees it).

Traffic goes only to loopback.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psutil

from tests.support import REPO, free_port


def pg_bindir() -> Path | None:
    """The newest installed PostgreSQL's ``bin`` (Debian's layout, scripts/ensure-system.sh)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def can_run_own_postgres() -> str | None:
    """Why this host cannot run an own PostgreSQL, or None if it can."""
    if os.geteuid() != 0:
        return "needs root (to run PostgreSQL as the postgres user)"
    if pg_bindir() is None:
        return "no PostgreSQL installed (scripts/ensure-system.sh --test)"
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres user"
    return None


class OwnPostgres:
    """A PostgreSQL cluster of this test only: its own data directory, port and socket."""

    def __init__(self, root: Path | None = None):
        #: outside pytest's temporary directories: those are 0700, closed to the postgres user
        self.root = root or Path(tempfile.mkdtemp(prefix="sde-faults-pg-"))
        self.data = self.root / "pgdata"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.bin = pg_bindir()
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/sde"

    def _as_postgres(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def init(self) -> OwnPostgres:
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root, "postgres", "postgres")
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        self.start()
        self._as_postgres(
            str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
            "postgres", "sde",
        )  # fmt: skip
        return self

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        res = self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts,
            "-w", "-t", "60", "start", check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr + self.log.read_text()[-2000:]

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop",
            check=False,
        )  # fmt: skip

    def restart(self) -> None:
        self.stop()
        self.start()

    def postmaster(self) -> psutil.Process | None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            return psutil.Process(pid)
        except (OSError, ValueError, IndexError, psutil.NoSuchProcess):
            return None

    def kill(self) -> None:
        """``kill -9`` of the postmaster (a crash), then wait for its backends to go."""
        proc = self.postmaster()
        if proc is None:
            return
        children = proc.children(recursive=True)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        psutil.wait_procs(children, timeout=30)
        for child in children:  # backends end on their own when the postmaster dies
            if child.is_running():
                child.kill()

    def remove(self) -> None:
        self.stop("immediate")
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


class Tmpfs:
    """A tmpfs of ``size`` mounted at ``path`` (root only); :meth:`remove` unmounts it."""

    def __init__(self, path: Path, size: str):
        self.path = path
        self.size = size

    def mount(self) -> Tmpfs:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755", "tmpfs", str(self.path)],
            check=True,
            capture_output=True,
        )
        return self

    def free(self) -> int:
        return shutil.disk_usage(self.path).free

    def remove(self) -> None:
        subprocess.run(["umount", str(self.path)], check=False, capture_output=True)


class ServiceThread:
    """The real ``sde`` service app on a fixed loopback port, on its own event loop."""

    def __init__(self, db_url: str, state_dir: Path, tokens: dict[str, dict], **settings):
        self.db_url = db_url
        self.state_dir = state_dir
        self.tokens = tokens
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/services/sde/"
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.server = None
        self.auth = None

    def _call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> ServiceThread:
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
            self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
            self.thread.start()
        self._call(self._listen())
        return self

    async def _listen(self) -> None:
        from sde_spawner.checking.testing import FakeHubOAuth
        from sde_spawner.services.app import ServiceSettings, http_server, make_app

        settings = ServiceSettings.from_env(
            {},
            prefix="/services/sde/",
            bind_ip="127.0.0.1",
            port=self.port,
            db_url=self.db_url,
            state_dir=str(self.state_dir),
            **self.settings,
        )
        self.auth = self.auth or FakeHubOAuth(self.tokens)
        self.server = http_server(make_app(settings, hub_auth=self.auth))
        self.server.listen(self.port, "127.0.0.1")

    async def _close(self) -> None:
        self.server.stop()
        await self.server.close_all_connections()
        self.server = None

    def stop(self) -> None:
        """Stop listening and close every connection (the service is down)."""
        if self.server is not None:
            self._call(self._close())

    def close(self) -> None:
        self.stop()
        if self.auth is not None:
            self.auth.close()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
            self.loop = None


def admin(db_url: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``sde-admin --db URL ARGS`` in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "sde_spawner.cli", "--db", db_url, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        check=False,
        timeout=300,
    )
