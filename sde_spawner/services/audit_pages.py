"""The audit side of the ``sde`` service: periodic signed checkpoints and the admin page.

Checkpoints: every ``audit_checkpoint_seconds`` (a setting, default 300) the service signs the
chain's head (HMAC-SHA256, key file created 0600 on first use) into the ``audit_checkpoint``
table and an append-only JSON Lines file beside it, so a truncated tail is detected.

Admin page ``{prefix}audit/``: the service's ``admins`` only; filters by person,
project, action and time; shows the verify result and offers the JSON Lines export. Guarded
like every page of the service (:class:`~sde_spawner.services.pages.BrowserPage`): the admin's
browser session only, so an admin token pasted into a workspace exports nothing.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import secrets
from datetime import datetime
from pathlib import Path
from urllib.parse import urlencode

from jupyterhub.utils import url_path_join
from tornado import template, web

from sde_spawner import audit
from sde_spawner.services.pages import BrowserPage

log = logging.getLogger(__name__)
_LOADER = template.Loader(os.path.join(os.path.dirname(__file__), "templates"))


def ensure_key(path: Path) -> bytes:
    """The checkpoint key, created (random, 0600) if missing."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return audit.load_key_file(path)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    return audit.load_key_file(path)


def write_checkpoint(sessionmaker, key: bytes, file: Path):
    with sessionmaker() as s, s.begin():
        return audit.checkpoint(s, key, file=file)


async def checkpoint_loop(sessionmaker, settings) -> None:
    interval = settings.audit_checkpoint_seconds
    key_path, file = settings.audit_paths()
    key = ensure_key(key_path)
    while True:
        try:
            cp = await asyncio.to_thread(write_checkpoint, sessionmaker, key, file)
            log.info("audit checkpoint at seq %s", cp.seq)
        except Exception:
            log.exception("audit checkpoint failed")
        await asyncio.sleep(interval)


FILTER_ARGS = ("person", "project", "action", "since", "until")


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise web.HTTPError(400, f"not a date/time: {value[:40]!r}") from None


class AuditPageHandler(BrowserPage):
    """The audit trail for hub admins: filters, verify status, JSON Lines export."""

    action = "audit.page.refused"  # what the guard's refusals here are audited as

    def _filters(self) -> dict:
        return {
            "actor": self.get_argument("person", None) or None,
            "project": self.get_argument("project", None) or None,
            "action": self.get_argument("action", None) or None,
            "since": _time(self.get_argument("since", None)),
            "until": _time(self.get_argument("until", None)),
        }

    async def get(self, export: str = ""):
        user = self.current_user
        if user["name"] not in self.settings["sde"].admins:
            await self.refuse("the audit trail is for administrators only", actor=user["name"])
        filters = self._filters()
        Session = self.settings["sessionmaker"]
        key_path, file = self.settings["sde"].audit_paths()
        if export:
            buf = io.StringIO()

            def dump():
                with Session() as s:
                    audit.export_jsonl(s, buf, **filters)

            await asyncio.to_thread(dump)
            self.set_header("Content-Type", "application/x-ndjson")
            self.set_header("Content-Disposition", 'attachment; filename="audit.jsonl"')
            self.finish(buf.getvalue())
            return

        def read():
            with Session() as s:
                rows = audit.query(s, **filters, limit=500)
                key = audit.load_key_file(key_path) if key_path.exists() else None
                result = audit.verify(
                    s, checkpoint_key=key, checkpoint_file=file if file.exists() else None
                )
                return rows, result

        rows, result = await asyncio.to_thread(read)
        export_query = urlencode(
            {k: self.get_argument(k) for k in FILTER_ARGS if self.get_argument(k, "")}
        )
        html = _LOADER.load("audit.html").generate(
            rows=rows,
            result=result,
            export_query=export_query,
            user=user,
            prefix=self.settings["sde"].prefix,
            get=self.get_argument,
        )
        self.set_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.finish(html)


def routes(prefix: str) -> list[tuple]:
    return [(url_path_join(prefix, r"audit/(export\.jsonl)?"), AuditPageHandler)]
