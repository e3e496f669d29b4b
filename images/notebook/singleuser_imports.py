"""Keep the hub's database layer out of the workspace's single-user server (image build step).

``import jupyterhub.singleuser`` (what ``jupyterhub-singleuser`` runs) loads the hub's ORM:
SQLAlchemy, Alembic and ``jupyterhub.orm``, about 0.3-0.5 s of CPU on every server start,
though a single-user server never opens a database. Four module-level imports pull it in,
each for code that only the hub runs:

* ``jupyterhub/log.py`` imports ``handlers.pages`` (and with it every hub handler and the ORM)
  only to test ``isinstance(handler, HealthCheckHandler)`` in ``log_request``;
* ``jupyterhub/metrics.py`` imports ``orm`` for ``PeriodicMetricsCollector`` (hub-side);
* ``jupyterhub/utils.py`` imports ``sqlalchemy.exc`` for the ``catch_db_error`` decorator;
* ``jupyterhub/scopes.py`` imports ``sqlalchemy``, ``orm`` and ``roles`` for the functions that
  query the hub database; the single-user server uses only ``_intersect_expanded_scopes``
  without a database. (Its two ``sa.inspect`` calls import SQLAlchemy where they run: a lazy
  ``sqlalchemy`` package breaks SQLAlchemy's own submodule imports.)

This script rewrites those lines in the installed jupyterhub so that the names are bound
lazily: ``HealthCheckHandler`` is looked up in ``sys.modules`` (if ``jupyterhub.handlers.pages``
was never imported, no handler can be one, so the test is unchanged), and the other modules
become ``importlib.util.LazyLoader`` modules (the standard library's lazy-import recipe), loaded
on first attribute access, so the hub-side code works exactly as before.

Each edit must match the installed text exactly once, or the build stops: a jupyterhub upgrade
that moves these lines fails the image build instead of silently keeping the cost. Afterwards
the script imports ``jupyterhub.singleuser`` and fails unless neither SQLAlchemy, Alembic nor
``jupyterhub.orm`` were loaded, and checks that the hub-side names still resolve.

Usage (Dockerfile): ``python singleuser_imports.py`` with the venv's python.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

LAZY = '''

def _lazy_module(name):
    """Module NAME, executed on first attribute access (importlib.util.LazyLoader): the
    single-user server imports this module but never touches the hub's database layer
    (added at image build, images/notebook/singleuser_imports.py)."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, module)  # as the import system does for submodules
    spec.loader.exec_module(module)
    return module
'''

#: file -> (old, new[, how many times old occurs]) edits, applied in order.
EDITS: dict[str, list[tuple]] = {
    "log.py": [
        ("import json\n", "import json\nimport sys\n"),
        ("from .handlers.pages import HealthCheckHandler\n", ""),
        (
            "isinstance(handler, StaticFileHandler | HealthCheckHandler)",
            "isinstance(handler, (StaticFileHandler, *_health_check_handlers()))",
        ),
        (
            "\n\ndef coroutine_frames(",
            "\n\ndef _health_check_handlers():\n"
            '    pages = sys.modules.get("jupyterhub.handlers.pages")\n'
            "    return (pages.HealthCheckHandler,) if pages is not None else ()\n"
            "\n\ndef coroutine_frames(",
        ),
    ],
    "metrics.py": [
        ("import os\n", "import os\nimport sys\n"),
        ("from . import orm\n", ""),
        (
            "from .utils import utcnow\n",
            "from .utils import utcnow\n" + LAZY + '\n\norm = _lazy_module("jupyterhub.orm")\n',
        ),
    ],
    "utils.py": [
        ("from sqlalchemy.exc import SQLAlchemyError\n", ""),
        (
            '    """Catch and rollback database errors"""\n',
            '    """Catch and rollback database errors"""\n'
            "    from sqlalchemy.exc import SQLAlchemyError\n",
        ),
    ],
    "scopes.py": [
        ("import re\n", "import re\nimport sys\n"),
        ("import sqlalchemy as sa\n", ""),
        ("sa.inspect(", "_sa_inspect(", 2),
        (
            "from . import orm, roles\n",
            LAZY.lstrip("\n")
            + '\n\norm = _lazy_module("jupyterhub.orm")\n'
            + 'roles = _lazy_module("jupyterhub.roles")\n'
            + "\n\ndef _sa_inspect(obj):\n"
            + "    from sqlalchemy import inspect\n\n"
            + "    return inspect(obj)\n",
        ),
    ],
}

CHECK = """
import sys
import jupyterhub.singleuser
loaded = sorted(m for m in ("sqlalchemy", "alembic", "jupyterhub.orm", "jupyterhub.handlers")
                if m in sys.modules and not type(sys.modules[m]).__name__ == "_LazyModule")
assert not loaded, f"import jupyterhub.singleuser still loads {loaded}"
import jupyterhub.scopes, jupyterhub.metrics, jupyterhub.orm
assert jupyterhub.scopes.orm.User is jupyterhub.orm.User
assert jupyterhub.scopes.roles.roles_to_scopes and jupyterhub.scopes._sa_inspect
from jupyterhub.log import _health_check_handlers
from jupyterhub.handlers.pages import HealthCheckHandler
assert _health_check_handlers() == (HealthCheckHandler,)
print("jupyterhub.singleuser imports without the hub ORM")
"""


def main() -> int:
    root = Path(sysconfig.get_paths()["purelib"]) / "jupyterhub"
    for rel, edits in EDITS.items():
        path = root / rel
        text = path.read_text()
        for old, new, *times in edits:
            if text.count(old) != (times[0] if times else 1):
                sys.exit(f"{path}: {old!r} not found as expected; jupyterhub changed, review")
            text = text.replace(old, new)
        path.write_text(text)
    # New bytecode for the edited files (the image's .pyc are unchecked-hash, never re-stat'ed).
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-f", "--invalidation-mode", "unchecked-hash"]
        + [str(root / rel) for rel in EDITS],
        check=True,
    )
    subprocess.run([sys.executable, "-c", CHECK], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
