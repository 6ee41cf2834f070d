"""The state machine: every allowed and every forbidden transition, with its Event row."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import select

from models.records import Event, ServerRequest, transition
from models.states import (
    ALLOWED_TRANSITIONS,
    RESUME_STATE,
    TERMINAL_STATES,
    IllegalTransition,
    RequestState,
)
from tests.factories import add_request

ALL_PAIRS = list(itertools.product(RequestState, RequestState))
ALLOWED = [(a, b) for a, b in ALL_PAIRS if b in ALLOWED_TRANSITIONS[a]]
FORBIDDEN = [(a, b) for a, b in ALL_PAIRS if b not in ALLOWED_TRANSITIONS[a]]


def _events(session, request_id) -> list[Event]:
    return list(session.scalars(select(Event).where(Event.request_id == request_id)))


def test_the_table_matches_the_design():
    """The diagram of DESIGN.md, spelled out, so a change to the table is a visible decision."""
    S = RequestState
    assert set(ALLOWED) == {
        (S.PENDING, S.CREATING), (S.PENDING, S.FAILED), (S.PENDING, S.CANCELLED),
        (S.CREATING, S.BUILDING), (S.CREATING, S.FAILED), (S.CREATING, S.CANCELLED),
        (S.BUILDING, S.CREATING), (S.BUILDING, S.ATTACHING), (S.BUILDING, S.TAGGING),
        (S.BUILDING, S.FAILED), (S.BUILDING, S.CANCELLED),
        (S.ATTACHING, S.TAGGING), (S.ATTACHING, S.FAILED), (S.ATTACHING, S.CANCELLED),
        (S.TAGGING, S.ACTIVE), (S.TAGGING, S.FAILED), (S.TAGGING, S.CANCELLED),
        (S.FAILED, S.CREATING), (S.FAILED, S.BUILDING), (S.FAILED, S.ATTACHING),
        (S.FAILED, S.TAGGING),
        # Teardown: a request with a server, its own two states; a cancel stops it.
        (S.ACTIVE, S.TEARING_DOWN), (S.FAILED, S.TEARING_DOWN), (S.CANCELLED, S.TEARING_DOWN),
        (S.TEARING_DOWN, S.TORN_DOWN), (S.TEARING_DOWN, S.FAILED),
        (S.TEARING_DOWN, S.CANCELLED),
    }  # fmt: skip
    assert not ALLOWED_TRANSITIONS[S.TORN_DOWN]
    assert {S.ACTIVE, S.FAILED, S.CANCELLED, S.TORN_DOWN} == TERMINAL_STATES
    assert set(RESUME_STATE.values()) <= ALLOWED_TRANSITIONS[S.FAILED]


@pytest.mark.parametrize(("from_state", "to_state"), ALLOWED, ids=lambda s: s.value)
def test_allowed_transition_writes_state_and_event(session, from_state, to_state):
    request = add_request(session, from_state)

    transition(session, request, to_state, detail="why")
    session.commit()

    session.expire_all()
    stored = session.get(ServerRequest, request.id)
    assert stored.state is to_state
    last = _events(session, request.id)[-1]
    assert (last.from_state, last.to_state, last.detail) == (from_state, to_state, "why")
    assert last.at is not None


@pytest.mark.parametrize(("from_state", "to_state"), FORBIDDEN, ids=lambda s: s.value)
def test_forbidden_transition_raises_and_writes_nothing(session, from_state, to_state):
    request = add_request(session, from_state)
    events_before = len(_events(session, request.id))

    with pytest.raises(IllegalTransition, match=f"{from_state.value} -> {to_state.value}"):
        transition(session, request, to_state)
    session.commit()

    session.expire_all()
    assert session.get(ServerRequest, request.id).state is from_state
    assert len(_events(session, request.id)) == events_before


def test_history_reads_in_order(session):
    request = add_request(session)
    for state in (RequestState.CREATING, RequestState.BUILDING, RequestState.TAGGING):
        transition(session, request, state)
        session.commit()

    steps = [(e.from_state, e.to_state) for e in _events(session, request.id)]
    assert steps == [
        (None, RequestState.PENDING),
        (RequestState.PENDING, RequestState.CREATING),
        (RequestState.CREATING, RequestState.BUILDING),
        (RequestState.BUILDING, RequestState.TAGGING),
    ]
