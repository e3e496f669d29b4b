"""Refusals of output checking, and the transaction runner that audits them.

Operations take a SQLAlchemy session and plain arguments (who is acting comes from the
authenticated identity, never from a request body), return plain dicts, and raise
:class:`Refused` (with a reason a person can read) when a rule says no. :func:`perform` runs an
operation in its own transaction: it commits on success; on a refusal it rolls the change back
and commits the *denied* audit event in a fresh transaction, then re-raises (the same runner as
the registry's, :func:`sde_spawner.db.perform_audited`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.orm import Session

from sde_spawner import audit
from sde_spawner.db import perform_audited

T = TypeVar("T")


class Refused(Exception):
    """A rule said no. ``reason`` is for people; ``action`` names the audited action."""

    status = 403

    def __init__(
        self,
        action: str,
        reason: str,
        *,
        actor: str | None,
        project: str | None = None,
        details: dict | None = None,
        status: int | None = None,
    ):
        super().__init__(reason)
        self.action = action
        self.reason = reason
        self.actor = actor
        self.project = project
        self.details = details or {}
        if status is not None:
            self.status = status


class IllegalTransition(Refused):
    """The transition table (or the actor's role) does not allow this state change."""


class NotFound(Refused):
    status = 404


class Invalid(Refused):
    """The caller sent something malformed."""

    status = 400


def perform(sessionmaker, operation: Callable[..., T], /, *args, **kwargs) -> T:
    """Run ``operation(session, *args, **kwargs)`` in one transaction.

    Commits on success. On :class:`Refused` the transaction is rolled back and the denial is
    audited (outcome ``denied``) and committed in a transaction of its own, then re-raised.
    """
    return perform_gated(sessionmaker, None, operation, *args, **kwargs)


def perform_gated(
    sessionmaker,
    audit_denial: Callable[[Refused], bool] | None,
    operation: Callable[..., T],
    /,
    *args,
    **kwargs,
) -> T:
    """:func:`perform`, where ``audit_denial(exc)`` decides whether a refusal gets its own
    audit row (False: the flood limiter counts it into an aggregated row instead)."""
    return perform_audited(
        sessionmaker,
        operation,
        args,
        kwargs,
        refusal=Refused,
        record_denial=record_denial,
        audit_denial=audit_denial,
    )


def record_denial(session: Session, exc: Refused) -> None:
    audit.append(
        session,
        exc.action,
        actor=(exc.actor or "(unidentified)")[:64],
        project=exc.project,
        outcome="denied",
        reason=exc.reason[:2000],
        details=exc.details or None,
    )
