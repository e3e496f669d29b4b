"""Export request states and the legal transitions between them, as data.

This module is the single statement of the export state machine::

    draft -> submitted -> in_review -> approved | rejected | returned
    returned -> submitted          (a resubmission: a new snapshot version)
    approved -> released           (the requester's first download)
    submitted | in_review -> withdrawn

Every edge names the one kind of actor allowed to take it: the *requester* (the person who
made the request, from their workspace or browser), a *checker* (an output checker of the
request's project who is not the requester) or the *system* (the service itself, when the
reviews add up to an outcome). :func:`sde_spawner.checking.transitions.transition` is the only code
that changes a request's state, and it checks this table.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType


class State(enum.StrEnum):
    draft = "draft"
    submitted = "submitted"
    in_review = "in_review"
    approved = "approved"
    rejected = "rejected"
    returned = "returned"
    released = "released"
    withdrawn = "withdrawn"


class Actor(enum.StrEnum):
    """Who may take a transition."""

    requester = "requester"
    checker = "checker"
    system = "system"


TRANSITIONS: Mapping[tuple[State, State], Actor] = MappingProxyType(
    {
        (State.draft, State.submitted): Actor.requester,
        (State.submitted, State.in_review): Actor.checker,
        (State.in_review, State.approved): Actor.system,
        (State.in_review, State.rejected): Actor.system,
        (State.in_review, State.returned): Actor.system,
        (State.returned, State.submitted): Actor.requester,
        (State.approved, State.released): Actor.requester,
        (State.submitted, State.withdrawn): Actor.requester,
        (State.in_review, State.withdrawn): Actor.requester,
    }
)

#: States in which checkers may claim and review the current version.
REVIEWABLE = frozenset({State.submitted, State.in_review})
#: States in which the requester may add or replace files (of a version not yet submitted).
EDITABLE = frozenset({State.draft, State.returned})
#: States after a decision: the requester may see the per-file outcomes and comments.
DECIDED = frozenset({State.approved, State.rejected, State.returned, State.released})
#: States whose approved files may be downloaded by the requester.
RELEASABLE = frozenset({State.approved, State.released})
#: No transition leaves these.
TERMINAL = frozenset(s for s in State if not any(src == s for src, _ in TRANSITIONS))

#: The outcome of a review round, as computed from the decisions.
OUTCOMES = frozenset({State.approved, State.rejected, State.returned})


def allowed_actor(source: State | str, target: State | str) -> Actor | None:
    """The actor allowed to move a request from ``source`` to ``target``; None if illegal."""
    try:
        return TRANSITIONS.get((State(source), State(target)))
    except ValueError:
        return None


def targets(source: State | str) -> dict[State, Actor]:
    """Where a request in ``source`` may go next, and who may take it there."""
    return {dst: actor for (src, dst), actor in TRANSITIONS.items() if src == State(source)}


class Decision(enum.StrEnum):
    """A checker's decision on one file."""

    approve = "approve"
    changes = "changes"
    reject = "reject"


#: Why a checker asked for changes or rejected a file (shown to the requester with a comment).
REASON_CODES: Mapping[str, str] = MappingProxyType(
    {
        "small-cell-count": "Contains small cell counts (disclosure risk)",
        "identifiable": "Could identify a person",
        "not-aggregate": "Not aggregate output (row-level or near row-level data)",
        "dominance": "A few contributors dominate a total",
        "differencing": "Could be differenced against other outputs",
        "no-context": "Not enough description to check it",
        "other": "Other (see comment)",
    }
)
