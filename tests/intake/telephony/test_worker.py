"""The call-event worker: what it claims, in which order, and what it reads the events from."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event as sql_event
from sqlalchemy import select, text, update

from intake.calls import CallRecorder
from intake.desk import Desk
from intake.http import WORKER, create_app, http_context
from intake.sources.telephony.base import Invalid, Normalised, WebhookRequest
from intake.sources.telephony.worker import (
    ARRIVING,
    BACKLOG_BATCH,
    BATCH,
    BATCH_SECONDS,
    FEWEST,
    MAX_LAG,
    TURN,
    CallEventWorker,
)
from storage import inbound
from storage.db import Database
from storage.locks import lock_key, take_turn
from storage.models import (
    CallOutcome,
    Contact,
    InboundItem,
    InboundState,
    JournalEntry,
    utcnow,
)
from tests.intake.conftest import RULES, Seed, register
from tests.intake.telephony.conftest import ClientFactory, processed, settings_with
from tests.intake.telephony.test_generic import CALLER_E164, URL, event, the_call, tickets

GENERIC = "telephony:generic"


def _keep(db: Database, source_ref: str, source: str = GENERIC) -> int:
    with db.transaction() as session:
        return inbound.store(session, source=source, source_ref=source_ref, raw=b"raw").id


def _set(db: Database, item_id: int, state: InboundState, next_attempt_at: dt.datetime) -> None:
    with db.transaction() as session:
        session.execute(
            update(InboundItem)
            .where(InboundItem.id == item_id)
            .values(state=state, next_attempt_at=next_attempt_at)
        )


def test_claim_takes_new_and_due_items_in_arrival_order_and_leaves_the_rest(
    db: Database,
) -> None:
    now = utcnow()
    earlier, later = now - dt.timedelta(minutes=1), now + dt.timedelta(minutes=1)
    new_1 = _keep(db, "a")
    failed_due = _keep(db, "b")
    _set(db, failed_due, InboundState.FAILED, earlier)
    lease_over = _keep(db, "c")
    _set(db, lease_over, InboundState.PROCESSING, earlier)
    lease_running = _keep(db, "d")
    _set(db, lease_running, InboundState.PROCESSING, later)
    failed_later = _keep(db, "e")
    _set(db, failed_later, InboundState.FAILED, later)
    done = _keep(db, "f")
    _set(db, done, InboundState.DONE, earlier)
    _keep(db, "g", source="imap:support")
    new_2 = _keep(db, "h")

    with db.transaction() as session:
        first = inbound.claim(session, sources=[GENERIC], limit=3, now=now)
    with db.transaction() as session:
        rest = inbound.claim(session, sources=[GENERIC], limit=10, now=now)
    with db.transaction() as session:
        again = inbound.claim(session, sources=[GENERIC], limit=10, now=now)

    assert [item.id for item in first] == [new_1, failed_due, lease_over]
    assert [item.id for item in rest] == [new_2]
    assert again == []
    assert [item.attempts for item in first] == [1, 1, 1]
    with db.transaction() as session:
        claimed = session.get_one(InboundItem, new_1)
        assert (claimed.state, claimed.attempts) == (InboundState.PROCESSING, 1)
        assert claimed.next_attempt_at is not None
        assert claimed.next_attempt_at > now


@pytest.mark.parametrize("batches", ["one batch", "a batch per event"])
async def test_missed_calls_from_one_new_number_make_one_contact_and_one_ticket(
    db: Database, make_client: ClientFactory, batches: str
) -> None:
    client = await make_client()
    # Both calls are first heard of before the caller is a contact.
    for call_id in ("m-1", "m-2"):
        assert (await client.post(URL, json=event("newCall", call_id=call_id))).status == 200
    await processed(client)
    for call_id in ("m-1", "m-2"):
        body = event("hangup", call_id=call_id, cause="noAnswer")
        assert (await client.post(URL, json=body)).status == 200
        if batches == "a batch per event":
            await processed(client)
    await processed(client)

    (ticket,) = tickets(db)
    with db.transaction() as session:
        (contact,) = session.scalars(select(Contact).where(Contact.phone == CALLER_E164))
        states = set(session.scalars(select(InboundItem.state)))
    assert ticket.contact_id == contact.id
    assert the_call(db, "m-1").ticket_id == the_call(db, "m-2").ticket_id == ticket.id
    assert states == {InboundState.DONE}


@pytest.mark.parametrize("calls", ["heard of before the batch", "first heard of in the batch"])
async def test_a_batch_looks_up_its_callers_and_their_open_tickets_once_for_all_its_calls(
    db: Database, make_client: ClientFactory, seed: Seed, calls: str
) -> None:
    with db.transaction() as session:
        session.get_one(Contact, seed.contact_id).phone = CALLER_E164
    open_ticket = register(db, Desk(RULES), seed)
    client = await make_client()
    new_caller = {"from": "+7 916 765-43-21"}
    starts = [
        event("newCall", call_id="known-1"),
        event("newCall", call_id="known-2"),
        event("newCall", call_id="new-1", **new_caller),
        event("newCall", call_id="new-2", **new_caller),
        event("newCall", call_id="answered"),
    ]
    ends = [
        event("hangup", call_id="known-1", cause="noAnswer"),
        event("hangup", call_id="known-2", cause="busy"),
        event("hangup", call_id="new-1", cause="noAnswer", **new_caller),
        event("hangup", call_id="new-2", cause="noAnswer", **new_caller),
        event("answer", call_id="answered", user="anna"),
        event("hangup", call_id="answered", cause="normalClearing"),
    ]
    if calls == "heard of before the batch":
        for body in starts:
            assert (await client.post(URL, json=body)).status == 200
        await processed(client)
        starts = []
    for body in starts + ends:
        assert (await client.post(URL, json=body)).status == 200
    sent: list[str] = []

    def note(*args: object) -> None:
        sent.append(" ".join(str(args[2]).split()))

    sql_event.listen(db.engine, "before_cursor_execute", note)
    try:
        await processed(client)
    finally:
        sql_event.remove(db.engine, "before_cursor_execute", note)

    new_ticket = next(t for t in tickets(db) if t.id != open_ticket.id)
    calls = {call_id: the_call(db, call_id).ticket_id for call_id in ("known-1", "known-2")}
    calls |= {call_id: the_call(db, call_id).ticket_id for call_id in ("new-1", "new-2")}
    assert calls == {
        "known-1": open_ticket.id,
        "known-2": open_ticket.id,
        "new-1": new_ticket.id,
        "new-2": new_ticket.id,
    }
    assert the_call(db, "answered").ticket_id == open_ticket.id
    with db.transaction() as session:
        journaled = session.scalars(
            select(JournalEntry.action)
            .where(JournalEntry.ticket_id == open_ticket.id, JournalEntry.action != "registered")
            .where(JournalEntry.action != "assigned")
        ).all()
    assert sorted(journaled) == ["call_answered", "missed_call", "missed_call"]
    assert len([sql for sql in sent if "FROM contacts WHERE" in sql]) == 1
    assert len([sql for sql in sent if "FROM tickets WHERE tickets.contact_id" in sql]) == 1


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_events_stored_while_the_worker_finds_nothing_are_acted_on_at_once(
    db: Database, telephony_env: None, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL: the webhooks' commits run on storage threads beside the worker's, so
    # they can land after its claim looked and before it goes idle.
    looked, stored = threading.Event(), threading.Event()
    process_due = CallEventWorker.process_due

    def first_finds_nothing_meanwhile_events_arrive(
        worker: CallEventWorker, limit: int
    ) -> tuple[int, bool]:
        taken = process_due(worker, limit)
        if not looked.is_set():
            looked.set()
            assert stored.wait(timeout=10)
        return taken

    monkeypatch.setattr(CallEventWorker, "process_due", first_finds_nothing_meanwhile_events_arrive)
    app = create_app(http_context(settings_with(), db, Desk(RULES)))
    client = await aiohttp_client(app)
    await asyncio.to_thread(looked.wait, 10)
    for body in (event("newCall", call_id="w-1"), event("hangup", call_id="w-1", cause="busy")):
        assert (await client.post(URL, json=body)).status == 200
    stored.set()
    # Polling again would find them only after the poll interval.
    await asyncio.wait_for(app[WORKER].idle.wait(), timeout=10)

    assert [t.subject for t in tickets(db)] == [f"Missed call from {CALLER_E164}"]


async def test_the_worker_acts_on_what_the_edge_read_without_reading_it_again(
    db: Database, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_client()
    for name in ("newCall", "hangup"):
        body = event(name, call_id="r-1", cause="noAnswer")
        assert (await client.post(URL, json=body)).status == 200
    adapter = client.app[WORKER].adapters[GENERIC]

    def unreadable(request: WebhookRequest) -> Normalised:
        raise Invalid("read a second time")

    monkeypatch.setattr(adapter, "normalise", unreadable)
    await processed(client)

    assert [t.subject for t in tickets(db)] == [f"Missed call from {CALLER_E164}"]


async def test_events_kept_before_a_restart_are_read_again_from_the_kept_request(
    db: Database, make_client: ClientFactory, aiohttp_client: Any
) -> None:
    before = await make_client()
    for name in ("newCall", "hangup"):
        body = event(name, call_id="k-1", cause="noAnswer")
        assert (await before.post(URL, json=body)).status == 200

    app = create_app(http_context(settings_with(), db, Desk(RULES)), process_events=False)
    after = await aiohttp_client(app)
    await processed(after)

    assert [t.subject for t in tickets(db)] == [f"Missed call from {CALLER_E164}"]
    with db.transaction() as session:
        assert set(session.scalars(select(InboundItem.state))) == {InboundState.DONE}


async def test_a_batch_marks_each_item_with_its_own_ticket_or_reason(
    db: Database, make_client: ClientFactory
) -> None:
    blocked = ["+7 495 000-00-00", "+7 495 000-00-01"]
    generic = {"enabled": True, "token_env": "CTI_TOKEN", "blocked_numbers": blocked}
    client = await make_client(settings_with({"generic": generic}))
    for body in (
        event("newCall", call_id="b-1"),
        event("newCall", call_id="b-2", **{"from": "84950000000"}),
        event("hangup", call_id="b-1", cause="noAnswer"),
        event("newCall", call_id="b-3", **{"from": "84950000001"}),
        event("newCall", call_id="b-4", **{"from": "84950000000"}),
        event("newCall", call_id="b-5", **{"from": "+7 916 765-43-21"}),
    ):
        assert (await client.post(URL, json=body)).status == 200
    await processed(client)

    (ticket,) = tickets(db)
    with db.transaction() as session:
        items = session.execute(
            select(InboundItem.state, InboundItem.ticket_id, InboundItem.reason).order_by(
                InboundItem.id
            )
        ).all()
    assert [tuple(item) for item in items] == [
        (InboundState.DONE, None, None),
        (InboundState.IGNORED, None, "blocked number +74950000000"),
        (InboundState.DONE, ticket.id, None),
        (InboundState.IGNORED, None, "blocked number +74950000001"),
        (InboundState.IGNORED, None, "blocked number +74950000000"),
        (InboundState.DONE, None, None),
    ]


async def test_under_load_a_batch_takes_what_fits_its_time_at_the_last_cost_per_item(
    make_client: ClientFactory,
) -> None:
    client = await make_client()
    worker = client.app[WORKER]

    assert worker.batch_size() == BACKLOG_BATCH
    worker.notify()
    assert worker.batch_size() == BATCH
    worker.per_item = BATCH_SECONDS / 50
    assert worker.batch_size() == 48
    worker.per_item = BATCH_SECONDS
    assert worker.batch_size() == FEWEST
    worker.per_item = BATCH_SECONDS / 10_000
    assert worker.batch_size() == BACKLOG_BATCH


async def test_a_worker_gives_way_while_webhooks_press_for_at_most_max_lag(
    make_client: ClientFactory,
) -> None:
    client = await make_client()
    worker = client.app[WORKER]
    now = asyncio.get_running_loop().time()

    assert worker.give_way() == 0.0
    # A trickle: one request to a commit presses nothing; nor does a commit of several
    # that leaves none waiting (a call's events posted back to back).
    worker.notify(1, 0)
    worker.notify(1, 2)
    worker.notify(3, 0)
    assert worker.give_way() == 0.0
    # Several to a commit, more waiting for the next: they press, and the worker waits
    # until they may have eased off.
    worker.notify(3, 2)
    assert 0.0 < worker.give_way() <= ARRIVING
    # ... but not past MAX_LAG for the oldest event waiting.
    worker.behind_since = now - MAX_LAG + 0.05
    assert 0.0 < worker.give_way() <= 0.05
    worker.behind_since = now - MAX_LAG
    assert worker.give_way() == 0.0
    worker.behind_since = now
    worker.pressed_at = now - ARRIVING
    assert worker.give_way() == 0.0


async def _pressing(app: Any, stop: asyncio.Event) -> None:
    """Commits of several requests each, as webhooks pressing at full speed make them."""
    while not stop.is_set():
        app[WORKER].notify(4, 4)
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("max_lag", [30.0, 0.5])
async def test_events_stored_while_webhooks_press_are_acted_on_once_they_ease_off_or_lag(
    db: Database,
    telephony_env: None,
    aiohttp_client: Any,
    monkeypatch: pytest.MonkeyPatch,
    max_lag: float,
) -> None:
    monkeypatch.setattr("intake.sources.telephony.worker.MAX_LAG", max_lag)
    app = create_app(http_context(settings_with(), db, Desk(RULES)))
    client = await aiohttp_client(app)
    await asyncio.wait_for(app[WORKER].idle.wait(), timeout=10)
    stop = asyncio.Event()
    pressing = asyncio.create_task(_pressing(app, stop))
    try:
        for body in (event("newCall", call_id="p-1"), event("hangup", call_id="p-1", cause="busy")):
            assert (await client.post(URL, json=body)).status == 200
        began = asyncio.get_running_loop().time()
        if max_lag > 5:
            # Pressed on: nothing is acted on yet.
            await asyncio.sleep(1.0)
            assert tickets(db) == []
            stop.set()
        # Eased off, or waited MAX_LAG while pressed on: acted on.
        await asyncio.wait_for(app[WORKER].idle.wait(), timeout=10)
        assert [t.subject for t in tickets(db)] == [f"Missed call from {CALLER_E164}"]
        if max_lag < 5:
            assert not stop.is_set()
            assert asyncio.get_running_loop().time() - began < 5
    finally:
        stop.set()
        await pressing


async def test_a_trickle_of_webhooks_is_acted_on_as_it_comes(
    db: Database, telephony_env: None, aiohttp_client: Any
) -> None:
    app = create_app(http_context(settings_with(), db, Desk(RULES)))
    client = await aiohttp_client(app)
    for n in range(3):
        caller = {"from": f"+7916000000{n}"}
        body = event("hangup", call_id=f"t-{n}", cause="busy", **caller)
        assert (await client.post(URL, json=body)).status == 200
        assert app[WORKER].give_way() == 0.0
        await asyncio.wait_for(app[WORKER].idle.wait(), timeout=2)
        assert len(tickets(db)) == n + 1


async def test_a_batch_that_failed_while_webhooks_press_leaves_the_worker_behind_still(
    db: Database,
    telephony_env: None,
    aiohttp_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its items are left (one is taken alone): the worker goes on with them at once, not
    # after giving way for another MAX_LAG as if it had caught up.
    monkeypatch.setattr("intake.sources.telephony.worker.MAX_LAG", 2.0)
    calls: list[tuple[int, float]] = []
    armed = asyncio.Event()
    process = CallEventWorker._process

    def first_batch_fails(worker: CallEventWorker, limit: int) -> tuple[int, bool]:
        if armed.is_set():
            calls.append((limit, time.monotonic()))
            if len(calls) == 1:
                raise RuntimeError("the batch's transaction failed")
        return process(worker, limit)

    monkeypatch.setattr(CallEventWorker, "_process", first_batch_fails)
    app = create_app(http_context(settings_with(), db, Desk(RULES)))
    client = await aiohttp_client(app)
    stop = asyncio.Event()
    pressing = asyncio.create_task(_pressing(app, stop))
    try:
        for n in range(3):
            body = event("hangup", call_id=f"f-{n}", cause="busy", **{"from": f"+7916000001{n}"})
            assert (await client.post(URL, json=body)).status == 200
        armed.set()
        await asyncio.wait_for(_until(lambda: len(tickets(db)) == 3), timeout=10)
    finally:
        stop.set()
        await pressing
    # The failed batch, then (after one item alone) the next batch.
    (failed, after_failure), (_, next_batch) = calls[:2]
    assert failed > 1
    assert next_batch - after_failure < 1.0


async def _until(condition: Callable[[], bool]) -> None:
    # What is looked for is in the database, which has no event to wait on.
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def test_an_event_whose_transaction_fails_even_alone_is_set_aside_and_the_rest_go_on(
    db: Database, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    process = CallRecorder.process

    def fails_with_the_poisoned(recorder: CallRecorder, session: Any, work: Any) -> None:
        if any(w.item.source_ref.startswith("p-0:") for w in work):
            raise RuntimeError("the transaction cannot be written")
        process(recorder, session, work)

    monkeypatch.setattr(CallRecorder, "process", fails_with_the_poisoned)
    client = await make_client()
    for n in range(3):
        body = event("hangup", call_id=f"p-{n}", cause="busy", **{"from": f"+7916000002{n}"})
        assert (await client.post(URL, json=body)).status == 200

    await processed(client)

    assert len(tickets(db)) == 2
    with db.transaction() as session:
        states = session.execute(
            select(InboundItem.source_ref, InboundItem.state, InboundItem.error).order_by(
                InboundItem.id
            )
        ).all()
    assert [(ref, state) for ref, state, _ in states] == [
        ("p-0:hangup", InboundState.FAILED),
        ("p-1:hangup", InboundState.DONE),
        ("p-2:hangup", InboundState.DONE),
    ]
    assert "the transaction cannot be written" in (states[0].error or "")


async def test_with_the_database_away_the_worker_waits_a_poll_interval_before_trying_again(
    db: Database, telephony_env: None, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tries: list[int] = []

    def database_away(worker: CallEventWorker, limit: int) -> tuple[int, bool, float]:
        tries.append(limit)
        raise RuntimeError("database is away")

    monkeypatch.setattr(CallEventWorker, "_timed", database_away)
    app = create_app(http_context(settings_with(), db, Desk(RULES)))
    await aiohttp_client(app)
    # Webhooks keep waking it; it does not try again before the poll interval (5 s).
    for _ in range(10):
        app[WORKER].notify()
        await asyncio.sleep(0.05)
    assert tries == [BACKLOG_BATCH]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_two_daemons_take_turns_so_a_call_s_events_apply_in_order(
    db: Database, make_client: ClientFactory
) -> None:
    # Daemon A has claimed the call's answer; daemon B, whose claim skips what A locked,
    # would take the hangup after it and apply it first (the answer then too late: a
    # missed call for an answered one). B waits for A's turn to end instead.
    client = await make_client()
    worker = client.app[WORKER]
    await client.post(URL, json=event("newCall"))
    await processed(client)
    for body in (
        event("answer", user="anna"),
        event("newCall", call_id="c-2", **{"from": "+79167654321"}),
        event("hangup", cause="normalClearing"),
    ):
        assert (await client.post(URL, json=body)).status == 200
    claimed = threading.Event()

    def daemon_a() -> None:
        with db.transaction() as session:
            take_turn(session, TURN)
            items = inbound.claim(session, limit=1, sources=worker.sources)
            assert [item.source_ref for item in items] == ["c-1:answer"]
            claimed.set()
            time.sleep(0.5)
            worker._act(session, items)

    def daemon_b() -> None:
        assert claimed.wait(5)
        worker.process_due()

    await asyncio.gather(asyncio.to_thread(daemon_a), asyncio.to_thread(daemon_b))

    call = the_call(db)
    assert (call.outcome, call.answered_at is not None, call.agent) == (
        CallOutcome.ANSWERED,
        True,
        "anna",
    )
    assert tickets(db) == []


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_an_item_taken_alone_keeps_the_turn_from_its_claim_to_its_work(
    db: Database, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After a failed batch, an item is claimed (committed) and then acted on: another
    # daemon must not apply the same call's hangup in between.
    client = await make_client()
    worker = client.app[WORKER]
    await client.post(URL, json=event("newCall"))
    await processed(client)
    for body in (event("answer", user="anna"), event("hangup", cause="normalClearing")):
        assert (await client.post(URL, json=body)).status == 200
    claimed = threading.Event()
    transaction = db.transaction
    begun: list[int] = []

    @contextmanager
    def paced() -> Iterator[Any]:
        # Daemon A pauses between its claim's commit and the transaction of its work.
        if threading.current_thread().name == "daemon-a":
            begun.append(1)
            if len(begun) == 2:
                claimed.set()
                time.sleep(0.5)
        with transaction() as session:
            yield session

    monkeypatch.setattr(db, "transaction", paced)

    def daemon_a() -> None:
        threading.current_thread().name = "daemon-a"
        assert worker._alone() == 1

    def daemon_b() -> None:
        assert claimed.wait(5)
        worker.process_due()

    await asyncio.gather(asyncio.to_thread(daemon_a), asyncio.to_thread(daemon_b))

    call = the_call(db)
    assert (call.outcome, call.answered_at is not None) == (CallOutcome.ANSWERED, True)
    assert tickets(db) == []


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_a_turn_held_too_long_elsewhere_is_waited_for_a_bounded_time(
    db: Database, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A daemon frozen while holding the turn must not stop the others for good, nor keep
    # their storage thread from ending when they stop.
    monkeypatch.setattr("storage.locks.TURN_WAIT", 0.2)
    client = await make_client()
    worker = client.app[WORKER]
    assert (await client.post(URL, json=event("newCall"))).status == 200
    with db.engine.connect() as frozen:
        frozen.execute(text("SELECT pg_advisory_lock(:key)"), {"key": lock_key(TURN)})
        began = time.monotonic()
        assert await asyncio.to_thread(worker.process_due) == (0, False)
        assert time.monotonic() - began < 3
        frozen.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": lock_key(TURN)})
    assert await asyncio.to_thread(worker.process_due) == (1, False)
