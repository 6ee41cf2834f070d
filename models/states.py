"""The request state machine: states, the steps that fail, and the allowed transitions.

Every state change goes through :func:`models.records.transition`, which checks it against
``ALLOWED_TRANSITIONS`` and writes an ``Event`` row in the same transaction.
"""

from __future__ import annotations

import enum


class RequestState(enum.StrEnum):
    PENDING = "PENDING"
    CREATING = "CREATING"
    BUILDING = "BUILDING"
    ATTACHING = "ATTACHING"
    TAGGING = "TAGGING"
    ACTIVE = "ACTIVE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    #: Teardown (``tasks/teardown.py``): volumes detached, then the server deleted.
    TEARING_DOWN = "TEARING_DOWN"
    TORN_DOWN = "TORN_DOWN"


class Step(enum.StrEnum):
    """The chain's steps; ``failed_step`` names one so that a retry resumes there."""

    CREATE = "create"
    POLL_CREATE = "poll_create"
    ATTACH = "attach"
    TAG = "tag"
    RENAME = "rename"
    FINALIZE = "finalize"
    TEARDOWN = "teardown"


S = RequestState

#: States a request never leaves on its own (a FAILED one may be retried by an operator).
TERMINAL_STATES = frozenset({S.ACTIVE, S.FAILED, S.CANCELLED, S.TORN_DOWN})

#: States a chain is working on; the reconciler watches these for lack of progress.
IN_FLIGHT_STATES = frozenset(
    {S.PENDING, S.CREATING, S.BUILDING, S.ATTACHING, S.TAGGING, S.TEARING_DOWN}
)

#: from-state -> the states it may go to. Cancel is allowed from every unfinished state; a
#: FAILED request is retried into the state of the step that failed. A request with a server
#: (ACTIVE, or a FAILED or CANCELLED leftover) may be torn down; a cancel stops a teardown.
ALLOWED_TRANSITIONS: dict[RequestState, frozenset[RequestState]] = {
    # PENDING -> FAILED: the preflight refused the batch before any create.
    S.PENDING: frozenset({S.CREATING, S.FAILED, S.CANCELLED}),
    S.CREATING: frozenset({S.BUILDING, S.FAILED, S.CANCELLED}),
    S.BUILDING: frozenset({S.CREATING, S.ATTACHING, S.TAGGING, S.FAILED, S.CANCELLED}),
    S.ATTACHING: frozenset({S.TAGGING, S.FAILED, S.CANCELLED}),
    S.TAGGING: frozenset({S.ACTIVE, S.FAILED, S.CANCELLED}),
    S.ACTIVE: frozenset({S.TEARING_DOWN}),
    S.FAILED: frozenset({S.CREATING, S.BUILDING, S.ATTACHING, S.TAGGING, S.TEARING_DOWN}),
    S.CANCELLED: frozenset({S.TEARING_DOWN}),
    S.TEARING_DOWN: frozenset({S.TORN_DOWN, S.FAILED, S.CANCELLED}),
    S.TORN_DOWN: frozenset(),
}

#: Where a retry of a FAILED request resumes, by the step that failed.
RESUME_STATE: dict[Step, RequestState] = {
    Step.CREATE: S.CREATING,
    # The create job is known and may have finished: look at it again rather than create.
    Step.POLL_CREATE: S.BUILDING,
    Step.ATTACH: S.ATTACHING,
    Step.TAG: S.TAGGING,
    Step.RENAME: S.TAGGING,
    Step.FINALIZE: S.TAGGING,
    Step.TEARDOWN: S.TEARING_DOWN,
}


class IllegalTransition(ValueError):
    """A state change the table does not allow."""

    def __init__(self, from_state: RequestState, to_state: RequestState) -> None:
        super().__init__(f"illegal transition {from_state.value} -> {to_state.value}")
        self.from_state = from_state
        self.to_state = to_state


def check_transition(from_state: RequestState, to_state: RequestState) -> None:
    """Raise :class:`IllegalTransition` unless the table allows ``from_state -> to_state``."""
    if to_state not in ALLOWED_TRANSITIONS[from_state]:
        raise IllegalTransition(from_state, to_state)
