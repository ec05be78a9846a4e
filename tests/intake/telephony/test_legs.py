"""A call whose legs share its id (Telnyx: the caller's leg and one per transfer): the
call is what the caller's leg says, answered when any leg was, whatever the order in
which the legs' events are applied."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence

import pytest

from intake.calls import LEG_WAIT, MAX_LEGS, CallPolicy, CallRecord, FollowUp, advance, settled
from intake.sources.telephony.model import KIND_SEQUENCE, CallEvent, EventKind
from storage.models import CallDirection, CallOutcome, CallState

CUSTOMER = "+79161234567"
DESK = "+74951112233"
AGENTS = {"b": "+74957654321", "c": "+74959876543"}
T0 = dt.datetime(2026, 11, 26, 10, 0, tzinfo=dt.UTC)
NOW = T0 + dt.timedelta(hours=1)
# Telnyx's: it tells of each leg as it begins, so an ended call waits only for legs that
# are known to be ringing or talking.
POLICY = CallPolicy()


def leg_event(
    leg: str,
    kind: EventKind,
    second: int,
    *,
    direction: CallDirection | None = None,
    **more: object,
) -> CallEvent:
    # As Telnyx tells them: only a leg's call.initiated says which way it goes; a transfer
    # leg goes out from the desk's number to the agent's.
    caller_leg = leg == "a"
    return CallEvent(
        provider="telnyx",
        call_id="session-1",
        kind=kind,
        sequence=KIND_SEQUENCE[kind],
        direction=direction,
        from_number=CUSTOMER if caller_leg else DESK,
        to_number=DESK if caller_leg else AGENTS.get(leg, DESK),
        occurred_at=T0 + dt.timedelta(seconds=second),
        leg=leg,
        **more,  # type: ignore[arg-type]
    )


def initiated(leg: str, second: int) -> CallEvent:
    direction = CallDirection.IN if leg == "a" else CallDirection.OUT
    return leg_event(leg, EventKind.RINGING, second, direction=direction)


def answered(leg: str, second: int) -> CallEvent:
    return leg_event(leg, EventKind.ANSWERED, second)


def hangup(leg: str, second: int, cause: str, outcome: CallOutcome | None) -> CallEvent:
    return leg_event(leg, EventKind.ENDED, second, cause=cause, outcome=outcome)


def first_heard(event: CallEvent) -> CallRecord:
    """The record as the worker creates it for the first event of a call."""
    return CallRecord(
        id=1,
        provider=event.provider,
        call_id=event.call_id,
        direction=event.direction,
        from_number=event.from_number,
        to_number=event.to_number,
        agent=None,
        state=CallState.RINGING,
        outcome=None,
        cause=None,
        started_at=None,
        answered_at=None,
        ended_at=None,
        duration=None,
        recording_url=None,
        last_sequence=0,
        legs=None,
        tell_at=None,
        contact_id=42,
        ticket_id=None,
        updated_at=NOW,
    )


def apply(events: Sequence[CallEvent]) -> tuple[CallRecord, list[FollowUp]]:
    record = first_heard(events[0])
    told = [f for event in events if (f := advance(record, event, NOW, POLICY)) is not None]
    return record, told


# Nobody answers: the caller rings, a transfer to agent B times out, the caller gives up.
UNANSWERED = [
    initiated("a", 0),
    initiated("b", 1),
    hangup("b", 31, "timeout", CallOutcome.MISSED),
    hangup("a", 40, "originator_cancel", CallOutcome.CANCELLED),
]
# The desk's application answers the caller, a transfer to B times out, one to C is
# answered, and the caller hangs up after talking to C.
TRANSFERRED = [
    initiated("a", 0),
    answered("a", 2),
    initiated("b", 3),
    hangup("b", 33, "timeout", CallOutcome.MISSED),
    initiated("c", 34),
    answered("c", 40),
    hangup("c", 100, "normal_clearing", None),
    hangup("a", 100, "normal_clearing", None),
]


def test_a_transfer_leg_that_nobody_answered_does_not_end_the_call() -> None:
    record, told = apply(UNANSWERED[:3])

    assert (record.state, told) == (CallState.RINGING, [])

    told += [f for f in [advance(record, UNANSWERED[3], NOW, POLICY)] if f is not None]
    assert told == [FollowUp.MISSED]
    assert (record.direction, record.from_number, record.to_number) == (
        CallDirection.IN,
        CUSTOMER,
        DESK,
    )
    assert (record.outcome, record.cause, record.ended_at) == (
        CallOutcome.CANCELLED,
        "originator_cancel",
        T0 + dt.timedelta(seconds=40),
    )
    assert [leg["id"] for leg in record.legs or ()] == ["a", "b"]


def test_a_call_answered_on_a_transfer_after_one_that_failed_is_one_answered_call() -> None:
    # The application answered the caller; no agent has yet.
    record, told = apply(TRANSFERRED[:4])
    assert (record.state, record.answered_at, told) == (CallState.RINGING, None, [])

    record, told = apply(TRANSFERRED)

    assert told == [FollowUp.ANSWERED]
    assert (record.state, record.outcome, record.cause) == (
        CallState.ENDED,
        CallOutcome.ANSWERED,
        "normal_clearing",
    )
    # Answered when agent C answered; the conversation lasted from then.
    assert (record.answered_at, record.ended_at, record.duration) == (
        T0 + dt.timedelta(seconds=40),
        T0 + dt.timedelta(seconds=100),
        60,
    )


def test_a_call_its_application_answered_and_no_agent_did_is_missed() -> None:
    record, told = apply([*TRANSFERRED[:4], hangup("a", 60, "normal_clearing", None)])

    assert told == [FollowUp.MISSED]
    assert (record.outcome, record.answered_at, record.duration) == (
        CallOutcome.MISSED,
        None,
        None,
    )


def test_a_call_with_no_leg_but_the_callers_is_answered_when_the_caller_is() -> None:
    # A PBX behind the provider answered it: its transfers are no legs the provider sees.
    record, told = apply([initiated("a", 0), answered("a", 3), hangup("a", 63, "x", None)])

    assert told == [FollowUp.ANSWERED]
    assert (record.answered_at, record.duration) == (T0 + dt.timedelta(seconds=3), 60)


def test_an_agent_answering_a_transfer_of_a_ringing_call_answered_it() -> None:
    events = [initiated("a", 0), initiated("c", 1), answered("c", 5), hangup("a", 65, "x", None)]

    record, told = apply([*events, hangup("c", 65, "normal_clearing", None)])

    assert told == [FollowUp.ANSWERED]
    assert (record.outcome, record.answered_at, record.duration) == (
        CallOutcome.ANSWERED,
        T0 + dt.timedelta(seconds=5),
        60,
    )


@pytest.mark.parametrize("scenario", [UNANSWERED, TRANSFERRED], ids=["unanswered", "transferred"])
def test_legs_heard_of_in_any_order_tell_the_desk_once_of_the_callers_call(
    scenario: list[CallEvent],
) -> None:
    caller_known = scenario.index(initiated("a", 0))
    caller_ended = scenario.index(next(e for e in scenario if e.leg == "a" and e.kind == "ended"))
    others = [i for i, e in enumerate(scenario) if e.leg != "a"]
    answers = [i for i, e in enumerate(scenario) if e.kind is EventKind.ANSWERED]
    orders = list(itertools.permutations(range(len(scenario))))
    # Every order of the short scenario; a fixed sample of the long one's 40,320.
    for order in orders if len(orders) < 1000 else orders[::97]:
        record, told = apply([scenario[i] for i in order])
        where = {i: position for position, i in enumerate(order)}
        # The desk is told once the caller's leg has both begun and ended; the call was
        # answered if an answer that counts was applied before that.
        # ... and every other leg heard of by then has ended.
        told_at = max(where[caller_known], where[caller_ended])
        while any(
            where[i] <= told_at
            for i in others
            if not any(
                scenario[j].leg == scenario[i].leg
                and scenario[j].kind is EventKind.ENDED
                and where[j] <= told_at
                for j in others
            )
        ):
            told_at += 1
        # Only agents' answers count once the desk knows of a leg that rang an agent.
        agents = any(where[i] <= told_at for i in others)
        was_answered = any(
            where[i] <= told_at and (scenario[i].leg != "a") == agents for i in answers
        )
        assert told == [FollowUp.ANSWERED if was_answered else FollowUp.MISSED], order
        assert (record.state, record.direction, record.from_number) == (
            CallState.ENDED,
            CallDirection.IN,
            CUSTOMER,
        ), order
        assert record.ended_at == scenario[caller_ended].occurred_at, order
        if record.from_number != first_heard(scenario[order[0]]).from_number:
            # Another leg was first taken for the caller's: its contact is not the caller's.
            assert record.contact_id is None, order


def test_repeated_and_late_events_of_a_leg_change_nothing() -> None:
    record, told = apply(UNANSWERED[:3])
    before = (record.state, record.legs)

    told += [f for e in [UNANSWERED[2], UNANSWERED[1]] if (f := advance(record, e, NOW, POLICY))]

    assert (told, (record.state, record.legs)) == ([], before)


def test_an_event_applied_to_a_copy_of_the_record_leaves_the_original_as_it_was() -> None:
    # A failed item is undone by putting back the record's copy taken before it.
    record, _ = apply(UNANSWERED[:2])
    legs = [dict(leg) for leg in record.legs or ()]
    copy = CallRecord(**{name: getattr(record, name) for name in record.__slots__})

    advance(copy, UNANSWERED[2], NOW, POLICY)

    assert record.legs == legs


def test_an_answer_on_a_transfer_after_the_caller_hung_up_answered_nothing() -> None:
    events = [initiated("a", 0), initiated("c", 1), hangup("a", 30, "originator_cancel", None)]
    late = answered("c", 30 + 3)

    record, told = apply([*events[:2], late, events[2]])

    # C's hangup is waited for, LEG_WAIT at most: a lost hangup keeps no call from the desk.
    assert (told, record.tell_at) == ([], NOW + LEG_WAIT)
    assert settled(record, NOW + LEG_WAIT - dt.timedelta(seconds=1)) is None
    assert settled(record, NOW + LEG_WAIT) is FollowUp.MISSED
    assert (record.outcome, record.answered_at, record.tell_at) == (CallOutcome.MISSED, None, None)


def test_an_answer_a_moment_after_the_callers_end_is_in_time() -> None:
    # Providers count whole seconds: the agent answered as the caller hung up.
    events = [initiated("a", 0), initiated("c", 1), hangup("a", 30, "originator_cancel", None)]

    record, told = apply([*events, answered("c", 31), hangup("c", 31, "normal_clearing", None)])

    assert (told, record.answered_at) == ([FollowUp.ANSWERED], T0 + dt.timedelta(seconds=31))


# The desk's application dials the customer (A), then transfers the call to agent B, who
# does not answer; the customer hangs up.
OUTBOUND = [
    leg_event("a", EventKind.RINGING, 0, direction=CallDirection.OUT),
    leg_event("a", EventKind.ANSWERED, 5),
    leg_event("b", EventKind.RINGING, 6, direction=CallDirection.OUT),
    hangup("b", 36, "timeout", CallOutcome.MISSED),
    hangup("a", 50, "normal_clearing", None),
]


def test_an_outbound_call_is_its_first_legs_whatever_order_its_legs_are_heard_of_in() -> None:
    # (Leg A's numbers as leg_event writes them: what matters is that they are A's.)
    for order in itertools.permutations(OUTBOUND):
        record, told = apply(order)

        assert told == [], order
        assert (record.state, record.direction, record.from_number, record.to_number) == (
            CallState.ENDED,
            CallDirection.OUT,
            CUSTOMER,
            DESK,
        ), order
        assert (record.cause, record.ended_at) == ("normal_clearing", T0 + dt.timedelta(seconds=50))


def test_a_call_of_more_legs_than_kept_ignores_the_rest() -> None:
    record, _ = apply([initiated("a", 0)])
    for n in range(MAX_LEGS + 5):
        advance(record, leg_event(f"x{n}", EventKind.ENDED, 1 + n, cause="timeout"), NOW, POLICY)

    assert len(record.legs or ()) == MAX_LEGS
    assert record.state is CallState.RINGING


def test_a_call_heard_of_before_legs_were_told_apart_goes_on_as_it_began() -> None:
    # Migration 0011: a call in progress has no legs kept; its caller's call.initiated was
    # applied already, and its next event names its leg.
    record = first_heard(initiated("a", 0))
    record.last_sequence = 2
    record.state = CallState.ANSWERED
    record.answered_at = T0 + dt.timedelta(seconds=2)

    told = advance(record, hangup("a", 60, "normal_clearing", None), NOW, POLICY)

    assert told is FollowUp.ANSWERED
    assert (record.state, record.direction, record.duration, record.legs) == (
        CallState.ENDED,
        CallDirection.IN,
        58,
        None,
    )


def test_a_leg_heard_of_ringing_after_the_callers_end_is_waited_for() -> None:
    # Telnyx's webhooks come each on its own: the transfer's, sent before the caller's
    # hangup, may be heard of after it; and its answer was before the caller's end.
    policy = CallPolicy(settle={"telnyx": 10.0})
    heard = NOW
    record = first_heard(initiated("a", 0))
    steps = [
        (initiated("a", 0), 0),
        (hangup("a", 60, "normal_clearing", None), 0),
        (initiated("c", 1), 5),
        (answered("c", 50), 12),
        (hangup("c", 60, "normal_clearing", None), 30),
    ]
    told = []
    for event, later in steps:
        now = heard + dt.timedelta(seconds=later)
        told += [f for f in [settled(record, now), advance(record, event, now, policy)] if f]

    assert told == []
    # Ten seconds after the last end heard of.
    assert record.tell_at == heard + dt.timedelta(seconds=40)
    assert settled(record, heard + dt.timedelta(seconds=40)) is FollowUp.ANSWERED


def test_a_settle_time_longer_than_the_wait_for_ringing_legs_is_kept() -> None:
    policy = CallPolicy(settle={"telnyx": 120.0})
    record, _ = apply([initiated("a", 0), initiated("c", 1)])

    advance(record, hangup("a", 30, "originator_cancel", None), NOW, policy)
    assert record.tell_at == NOW + dt.timedelta(seconds=120)
    later = NOW + dt.timedelta(seconds=5)
    advance(record, hangup("c", 30, "originator_cancel", None), later, policy)

    assert record.tell_at == later + dt.timedelta(seconds=120)


def test_a_leg_ringing_on_keeps_no_settle_time_short() -> None:
    # The settle time runs from the last end of a leg heard of, another leg ringing or not.
    policy = CallPolicy(settle={"telnyx": 10.0})
    record, _ = apply([initiated("a", 0), initiated("c", 1), initiated("d", 2)])
    advance(record, hangup("a", 60, "normal_clearing", None), NOW, policy)
    c_ended = NOW + dt.timedelta(seconds=55)

    advance(record, hangup("c", 60, "normal_clearing", None), c_ended, policy)

    # The wait for d (a minute after the caller's end) is over before c's settle time.
    assert record.tell_at == c_ended + dt.timedelta(seconds=10)
    later = c_ended + dt.timedelta(seconds=7)
    assert advance(record, answered("c", 50), later, policy) is None
    assert settled(record, c_ended + dt.timedelta(seconds=10)) is FollowUp.ANSWERED
