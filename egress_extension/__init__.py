"""Container side of the TRE: a Jupyter server extension for the researcher's workspace.

* export requests: files are confined to home, snapshotted with their SHA-256 and submitted to
  the hub-side output-checking service (:mod:`.exports`, :mod:`.files`, :mod:`.service`);
* the server's download channels are closed (:mod:`.blocking`);
* activity (files, kernels, executed code, terminals, blocked attempts) is shipped to the
  hub-side audit log (:mod:`.activity`, :mod:`.audit`);
* ``python -m egress_extension.cli`` is the command line (``sde-export``).

The application class lives in :mod:`.app`; it is imported lazily so that the command line
does not pay for importing jupyter_server.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """Tell jupyter_server which application implements the extension."""
    from egress_extension.app import EgressApp

    return [{"module": "egress_extension", "app": EgressApp}]
