"""The one function that moves an export request between states.

:func:`transition` checks the transition table (:data:`sde_spawner.checking.states.TRANSITIONS`,
the states and their edges as data) and the actor's role on the request
(:func:`~sde_spawner.checking.permissions.roles_for`), then changes the state and writes the
``export.<state>`` audit row in the caller's transaction. No other code sets a state.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from sde_spawner import audit
from sde_spawner.checking.errors import IllegalTransition
from sde_spawner.checking.models import ExportRequest, utcnow
from sde_spawner.checking.permissions import Principal, principal, roles_for
from sde_spawner.checking.states import State, allowed_actor


def transition(
    session: Session,
    request: ExportRequest,
    to_state: State | str,
    actor: Principal | str,
    *,
    reason: str | None = None,
    details: dict | None = None,
) -> None:
    """Move ``request`` to ``to_state`` if the table and ``actor``'s role allow it, and write
    the ``export.<to_state>`` audit row in the same transaction (the caller commits).

    Raises :class:`IllegalTransition` naming why otherwise (nothing is changed).
    """
    who = principal(actor)
    try:
        target = State(to_state)
    except ValueError:
        raise IllegalTransition(
            f"export.{to_state}",
            f"{to_state!r} is not an export request state",
            actor=who.name,
            project=request.project_slug,
            details={"request": request.id},
        ) from None
    source = State(request.state)
    base = {"request": request.id, "from": str(source), "to": str(target)}
    needed = allowed_actor(source, target)
    if needed is None:
        raise IllegalTransition(
            f"export.{target}",
            f"export request {request.id} is {source}; it cannot become {target}",
            actor=who.name,
            project=request.project_slug,
            details=base,
        )
    if needed not in roles_for(session, request, who):
        raise IllegalTransition(
            f"export.{target}",
            f"only the {needed} may move an export request from {source} to {target}; "
            f"{who.name} is not the {needed} of request {request.id}",
            actor=who.name,
            project=request.project_slug,
            details={**base, "required_role": str(needed)},
        )
    now = utcnow()
    request.state = str(target)
    request.updated_at = now
    if target in (State.approved, State.rejected, State.returned):
        request.decided_at = now
    audit.append(
        session,
        f"export.{target}",
        actor=who.name,
        project=request.project_slug,
        reason=reason,
        details={**base, "version": request.current_version, **(details or {})},
    )
    session.flush()
