"""What the bytes of an exported file are, against what its name says (rule ``type_mismatch``).

The decision is the airlock's own (:func:`sde_airlock.filetypes.check_bytes`: magic numbers,
image structure, UTF-8 text, valid JSON and notebooks), so the checks a checker reads say
exactly what the service refuses at upload; here it becomes a finding.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from sde_airlock.filetypes import TEXT_KINDS, check_bytes
from sde_airlock.sdc.core import FAIL, Finding


def type_mismatch(path: str, data: bytes) -> tuple[Finding | None, bool]:
    """``(finding, readable)``: a ``type_mismatch`` finding when the bytes are not what the
    name says (or are an archive or executable under any name), else None; and whether the
    content checks can still read the file (text that is only not a valid notebook or JSON
    is still read: what it holds is shown too)."""
    result = check_bytes(PurePosixPath(path).name, data)
    if result.ok:
        return None, True
    message = "; ".join(p.message for p in result.problems)
    readable = result.detected == result.expected or (
        result.detected in TEXT_KINDS and result.expected in TEXT_KINDS
    )
    return Finding("type_mismatch", FAIL, "file", message), readable
