"""Where the checkpoint key and the checkpoint file live, for the service and the CLI alike.

Both sit apart from the database, under ``SDE_AUDIT_DIR`` (default ``$SDE_STATE_DIR/audit``);
``SDE_AUDIT_KEY_FILE`` and ``SDE_AUDIT_CHECKPOINT_FILE`` override each one.
"""

from __future__ import annotations

import os
from pathlib import Path


def audit_paths(state_dir: str | None = None) -> tuple[Path, Path]:
    state_dir = state_dir or os.environ.get("SDE_STATE_DIR", "var")
    base = Path(os.environ.get("SDE_AUDIT_DIR", os.path.join(state_dir, "audit")))
    key = Path(os.environ.get("SDE_AUDIT_KEY_FILE", base / "checkpoint.key"))
    file = Path(os.environ.get("SDE_AUDIT_CHECKPOINT_FILE", base / "checkpoints.jsonl"))
    return key, file
