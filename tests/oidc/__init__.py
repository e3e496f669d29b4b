"""A real OpenID Connect provider for the login tests: ``oidc-provider`` (npm) on loopback.

:class:`OidcProvider` installs the pinned package on first use (``npm ci`` from
``package-lock.json`` into ``tests/oidc/node_modules``, gitignored), then runs ``provider.mjs``
on 127.0.0.1 with a port of the system's choosing, one confidential client and static accounts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent


def ensure_installed() -> None:
    """``npm ci`` the pinned oidc-provider unless it is there already."""
    if (HERE / "node_modules" / "oidc-provider" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed for the OpenID Connect provider of the login tests")
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=HERE, check=True, timeout=300
    )


class OidcProvider:
    """``node provider.mjs CONFIG`` in a subprocess; ``issuer`` once it answers."""

    def __init__(
        self,
        workdir: Path,
        *,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        accounts: dict[str, dict],
    ):
        self.config = workdir / "oidc-provider.json"
        self.config.write_text(
            json.dumps(
                {
                    "client_id": client_id,
                    "client_secret": client_secret,
                    "redirect_uris": [redirect_uri],
                    "accounts": accounts,
                }
            )
        )
        self.log_path = workdir / "oidc-provider.log"
        self.proc: subprocess.Popen | None = None
        self.issuer = ""

    def start(self) -> OidcProvider:
        ensure_installed()
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is needed for the OpenID Connect provider of the login tests")
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [node, str(HERE / "provider.mjs"), str(self.config)],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        line = self.proc.stdout.readline()  # {"issuer": ...} once it listens
        if not line:
            self.stop()
            raise RuntimeError(f"the OIDC provider did not start: {self.log_path.read_text()}")
        self.issuer = json.loads(line)["issuer"]
        doc = requests.get(f"{self.issuer}/.well-known/openid-configuration", timeout=10)
        doc.raise_for_status()
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc.stdout.close()
        self.proc = None
        self._log.close()
