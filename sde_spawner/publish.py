"""Write the pages an administrator publishes (the public register, the evidence report):
each file replaced whole or not at all, so a reader never sees half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_files(directory: str | os.PathLike, files: dict[str, str]) -> list[Path]:
    """Write each ``name -> text`` into ``directory`` (created if missing) through a temporary
    file renamed into place; returns the paths, in order."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, out / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(out / name)
    return written
