"""``sde-admin audit ...``: verify, export, query and checkpoint the audit trail.

The group is attached to the main ``sde-admin`` group with ``main.add_command(audit_group)``.
Exit codes: 0 success; 1 ``verify`` found the trail broken; 2 the command could not run
(bad option, unreadable key, no audit schema, database unreachable) -- one line on stderr.
"""

from __future__ import annotations

import sys
import unicodedata
from dataclasses import dataclass
from datetime import UTC, date, datetime

import click
from sqlalchemy.exc import SQLAlchemyError

from sde_spawner.audit import store
from sde_spawner.audit.canonical import format_timestamp
from sde_spawner.audit.paths import audit_paths
from sde_spawner.db import DEFAULT_DB_URL, make_engine, make_sessionmaker


class AuditCliError(click.ClickException):
    exit_code = 2


@dataclass
class _Context:
    db_url: str
    key_file: str | None
    checkpoint_file: str | None
    _engine: object = None

    @property
    def engine(self):
        if self._engine is None:
            self._engine = make_engine(self.db_url)
        return self._engine

    def session(self):
        return make_sessionmaker(self.engine)()

    def key(self, *, required: bool) -> bytes | None:
        if self.key_file is None:
            if required:
                raise AuditCliError("no checkpoint key: pass --key-file or set SDE_AUDIT_KEY_FILE")
            return None
        try:
            return store.load_key_file(self.key_file)
        except store.AuditError as exc:
            raise AuditCliError(str(exc)) from None

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def _db_error(exc: SQLAlchemyError) -> AuditCliError:
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    if "audit_" in detail and ("no such table" in detail or "does not exist" in detail):
        return AuditCliError(f"no audit tables in the database ({detail}); run the migrations")
    return AuditCliError(f"database error: {detail}")


def _parse_time(value: str | None, option: str) -> datetime | None:
    """ISO-8601 date or date-time; naive values are UTC."""
    if value is None:
        return None
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise AuditCliError(
            f"{option}: {value!r} is not an ISO-8601 date or time (e.g. 2025-01-31T12:00Z)"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _filters(person, project, action, since, until, limit) -> dict:
    if limit is not None and limit < 0:
        raise AuditCliError("--limit must not be negative")
    return {
        "actor": person,
        "project": project,
        "action": action,
        "since": _parse_time(since, "--since"),
        "until": _parse_time(until, "--until"),
        "limit": limit,
    }


def _filter_options(func):
    options = [
        click.option("--person", help="Only events whose actor is this username."),
        click.option("--project", help="Only events about this project."),
        click.option("--action", help="Only this action; a trailing * matches a prefix."),
        click.option("--since", help="From this UTC time (ISO-8601), inclusive."),
        click.option("--until", help="Up to this UTC time (ISO-8601), exclusive."),
        click.option("--limit", type=int, help="At most this many events (oldest first)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group("audit")
@click.option(
    "--db",
    "db_url",
    envvar="SDE_DB_URL",
    default=DEFAULT_DB_URL,
    show_default=True,
    help="Database URL (env SDE_DB_URL).",
)
@click.option(
    "--key-file",
    envvar="SDE_AUDIT_KEY_FILE",
    type=click.Path(dir_okay=False),
    help="File holding the HMAC key that signs checkpoints (env SDE_AUDIT_KEY_FILE).",
)
@click.option(
    "--checkpoint-file",
    envvar="SDE_AUDIT_CHECKPOINT_FILE",
    type=click.Path(dir_okay=False),
    help="Append-only JSON Lines file of signed checkpoints, kept apart from the database "
    "(env SDE_AUDIT_CHECKPOINT_FILE).",
)
@click.pass_context
def audit_group(ctx: click.Context, db_url: str, key_file, checkpoint_file) -> None:
    """The tamper-evident audit trail: verify, export, query, checkpoint.

    Without --key-file/--checkpoint-file, the service's own files under
    $SDE_STATE_DIR/audit/ are used when they exist.
    """
    parent = ctx.parent.obj if ctx.parent is not None else None
    if ctx.get_parameter_source("db_url") == click.core.ParameterSource.DEFAULT and getattr(
        parent, "db_url", None
    ):
        db_url = parent.db_url  # `sde-admin --db URL audit ...`
    default_key, default_file = audit_paths()
    if key_file is None and default_key.exists():
        key_file = str(default_key)
    if checkpoint_file is None and default_file.exists():
        checkpoint_file = str(default_file)
    obj = _Context(db_url, key_file, checkpoint_file)
    ctx.obj = obj
    ctx.call_on_close(obj.close)


@audit_group.command("verify")
@click.option(
    "--no-checkpoints",
    is_flag=True,
    help="Check the hash chain only, ignoring checkpoints.",
)
@click.pass_obj
def verify_cmd(obj: _Context, no_checkpoints: bool) -> None:
    """Recompute the hash chain and check it against the signed checkpoints.

    Prints "OK: N events verified" (exit 0) or "BROKEN at seq N: reason" (exit 1).
    Without a key the checkpoints' signatures cannot be checked (a note says so).
    """
    key = obj.key(required=False)
    try:
        result = store.verify(
            obj.engine,
            checkpoints=not no_checkpoints,
            checkpoint_key=key,
            checkpoint_file=None if no_checkpoints else obj.checkpoint_file,
        )
    except SQLAlchemyError as exc:
        raise _db_error(exc) from None
    if result.ok:
        click.echo(f"OK: {result.checked} events verified")
        if result.checkpoints_checked and not result.signatures_checked:
            click.echo("note: checkpoint signatures not checked (no key file)", err=True)
        return
    where = result.first_bad_seq if result.first_bad_seq is not None else "?"
    click.echo(f"BROKEN at seq {where}: {result.reason}")
    sys.exit(1)


@audit_group.command("export")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, allow_dash=True),
    default="-",
    show_default=True,
    help="Write JSON Lines to this file ('-' is stdout).",
)
@_filter_options
@click.pass_obj
def export_cmd(obj: _Context, out, person, project, action, since, until, limit) -> None:
    """Write events as JSON Lines (one object per line) for a SIEM."""
    filters = _filters(person, project, action, since, until, limit)
    try:
        with obj.session() as session:
            if out == "-":
                written = store.export_jsonl(session, sys.stdout, **filters)
            else:
                try:
                    fh = open(out, "w", encoding="ascii", newline="\n")  # noqa: SIM115
                except OSError as exc:
                    raise AuditCliError(f"cannot write {out}: {exc.strerror}") from None
                with fh:
                    written = store.export_jsonl(session, fh, **filters)
    except SQLAlchemyError as exc:
        raise _db_error(exc) from None
    click.echo(f"exported {written} events to {'stdout' if out == '-' else out}", err=True)


def printable(text: str) -> str:
    """``text`` safe for a terminal: control and format characters (escape sequences, bidi
    overrides, line breaks; workspaces write some of these events) shown as ``\\xNN`` /
    ``\\uNNNN``, and backslashes doubled so an escape cannot be forged."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
            code = ord(ch)
            if code < 0x100:
                out.append(f"\\x{code:02x}")
            else:
                out.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


_COLUMNS = ("seq", "at", "actor", "action", "project", "outcome", "reason")


@audit_group.command("query")
@_filter_options
@click.pass_obj
def query_cmd(obj: _Context, person, project, action, since, until, limit) -> None:
    """Print matching events as a table (oldest first)."""
    filters = _filters(person, project, action, since, until, limit)
    try:
        with obj.session() as session:
            events = store.query(session, **filters)
    except SQLAlchemyError as exc:
        raise _db_error(exc) from None
    rows = [
        tuple(
            printable(cell)
            for cell in (
                str(e.seq),
                format_timestamp(e.at),
                e.actor or "-",
                e.action,
                e.project or "-",
                e.outcome,
                e.reason or "",
            )
        )
        for e in events
    ]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(_COLUMNS)]
    widths[-1] = 0  # last column is not padded

    def line(cells):
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    click.echo(line(_COLUMNS))
    for row in rows:
        click.echo(line(row))
    click.echo(f"({len(rows)} events)", err=True)


@audit_group.command("checkpoint")
@click.option(
    "--no-verify",
    is_flag=True,
    help="Sign the head without first verifying the whole chain.",
)
@click.pass_obj
def checkpoint_cmd(obj: _Context, no_verify: bool) -> None:
    """Sign the current head (seq + hash) and record it in the DB and the checkpoint file.

    Verifies the chain first and refuses to sign a broken one. Run it periodically (cron or
    the lifecycle sweep) so a deleted tail is detected.
    """
    key = obj.key(required=True)
    try:
        if not no_verify:
            result = store.verify(
                obj.engine, checkpoint_key=key, checkpoint_file=obj.checkpoint_file
            )
            if not result.ok:
                raise AuditCliError(
                    f"refusing to sign: BROKEN at seq {result.first_bad_seq}: {result.reason}"
                )
        with obj.session() as session:
            try:
                record = store.checkpoint(session, key, file=obj.checkpoint_file)
            except store.AuditError as exc:
                raise AuditCliError(str(exc)) from None
            except OSError as exc:
                raise AuditCliError(
                    f"cannot append to {obj.checkpoint_file}: {exc.strerror}"
                ) from None
            session.commit()
    except SQLAlchemyError as exc:
        raise _db_error(exc) from None
    where = f" and {obj.checkpoint_file}" if obj.checkpoint_file else ""
    click.echo(f"checkpoint at seq {record.seq} hash {record.hash} written to the database{where}")
