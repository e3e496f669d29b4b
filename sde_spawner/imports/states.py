"""Import request states and the legal transitions between them, as data.

The single statement of the import state machine::

    submitted -> in_review -> approved | rejected
    submitted | in_review -> withdrawn
    approved -> revoked

A request is created ``submitted`` (its files arrive with it, checked, in one upload). Every
edge names the one kind of actor allowed to take it: the *requester* (the member who uploaded),
a *checker* (an output checker of the project who is not the requester) or the *system* (the
service, when the reviews add up to an outcome). :func:`sde_spawner.imports.logic.transition`
is the only code that changes a request's state, and it checks this table.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from sde_spawner.checking.states import Actor

__all__ = ["ACTIONS", "TRANSITIONS", "Actor", "Decision", "State", "allowed_actor"]


class State(enum.StrEnum):
    submitted = "submitted"
    in_review = "in_review"
    approved = "approved"
    rejected = "rejected"
    withdrawn = "withdrawn"
    revoked = "revoked"


TRANSITIONS: Mapping[tuple[State, State], Actor] = MappingProxyType(
    {
        (State.submitted, State.in_review): Actor.checker,
        (State.submitted, State.approved): Actor.system,
        (State.submitted, State.rejected): Actor.system,
        (State.in_review, State.approved): Actor.system,
        (State.in_review, State.rejected): Actor.system,
        (State.submitted, State.withdrawn): Actor.requester,
        (State.in_review, State.withdrawn): Actor.requester,
        (State.approved, State.revoked): Actor.checker,
    }
)

#: States in which checkers may review a request.
REVIEWABLE = frozenset({State.submitted, State.in_review})
#: The only state whose files appear under /imports.
MOUNTED = frozenset({State.approved})
TERMINAL = frozenset(s for s in State if not any(src == s for src, _ in TRANSITIONS))


class Decision(enum.StrEnum):
    """A checker's decision on a whole import request."""

    approve = "approve"
    reject = "reject"


class Action(enum.StrEnum):
    """Audit actions of imports (an enum: a typo cannot make a new kind of event)."""

    submitted = "import.submitted"
    refused = "import.refused"
    in_review = "import.in_review"
    approved = "import.approved"
    rejected = "import.rejected"
    withdrawn = "import.withdrawn"
    revoked = "import.revoked"
    reviewed = "import.reviewed"
    viewed = "import.file.viewed"
    page = "import.page.viewed"
    mounted = "import.mounted"


ACTIONS = frozenset(Action)


def allowed_actor(source: State | str, target: State | str) -> Actor | None:
    """The actor allowed to move a request from ``source`` to ``target``; None if illegal."""
    try:
        return TRANSITIONS.get((State(source), State(target)))
    except ValueError:
        return None


def outcome(decisions: list[str], required: int) -> State | None:
    """The outcome of the reviews so far: any reject -> rejected; ``required`` distinct
    approvals -> approved; otherwise None (still waiting)."""
    if any(d == Decision.reject for d in decisions):
        return State.rejected
    if sum(d == Decision.approve for d in decisions) >= max(1, required):
        return State.approved
    return None
