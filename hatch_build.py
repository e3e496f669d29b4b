"""Hatch build hook: compile the pseudonym batch library (sde_spawner/datasets/_pseudonym_batch.c).

It is a plain shared library loaded with ctypes (not a Python extension module), linked to
OpenSSL's libcrypto. When no C compiler or no OpenSSL headers are present the build goes on
without it and extracts use the slower SQL form of the same HMAC
(:mod:`sde_spawner.datasets.pseudonym_batch` says which one a process uses).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("sde_spawner/datasets/_pseudonym_batch.c")
TARGET = "sde_spawner/datasets/_pseudonym_batch.so"


def compile_library(root: Path, out: Path) -> bool:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc or sys.platform != "linux":
        print("sde-tre: no C compiler: pseudonyms use the SQL HMAC", file=sys.stderr)
        return False
    cmd = [cc, "-O2", "-shared", "-fPIC", "-o", str(out), str(root / SOURCE), "-lcrypto"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        print(
            "sde-tre: the pseudonym batch library did not compile (pseudonyms use the SQL "
            f"HMAC): {result.stderr.strip()[:500]}",
            file=sys.stderr,
        )
        return False
    return True


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        if version == "editable":
            # an editable install imports from the source tree: put the library there
            compile_library(root, root / TARGET)
            return
        self._tmp = tempfile.mkdtemp(prefix="sde-tre-build-")
        out = Path(self._tmp) / "_pseudonym_batch.so"
        if compile_library(root, out):
            build_data["force_include"][str(out)] = TARGET
            build_data["pure_python"] = False
            build_data["tag"] = (
                "py3-none-linux_x86_64"
                if os.uname().machine == "x86_64"
                else (f"py3-none-linux_{os.uname().machine}")
            )

    def finalize(self, version: str, build_data: dict, artifact_path: str) -> None:
        tmp = getattr(self, "_tmp", None)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
