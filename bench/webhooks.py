"""Webhook throughput and latency: ``.venv/bin/python bench/webhooks.py``.

Serves the generic CTI endpoint (the real app: token check, inbound store, call record,
missed-call tickets) on SQLite on a loopback port, and from a separate process posts call
triples (newCall, answer, hangup) as fast as they are answered, over each number of
connections of --concurrency. Then the same load against a bare aiohttp handler that only
answers 200, and against a reference floor: a handler that commits each raw body to SQLite
(as the daemon configures it) before answering, through a minimal group commit, and does
nothing else. Prints events/s and p50/p99 latency of each at each number of connections,
and at full speed: each server at the number of connections that gave it its best rate (a
server that commits before it answers shares each commit among the requests that wait for
it, so it needs more requests in flight than the bare handler to reach its best). The
servers take turns for --rounds rounds, and the median round is shown. Bounded by --calls
and --seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import ClientSession, TCPConnector, web

from intake.groupcommit import GroupCommit
from intake.http import PROCESS_EVENTS, WORKER
from storage.db import create_db_engine

TOKEN = "bench-token"  # noqa: S105 -- a throw-away token of the benchmark's own server


# --- the load (runs in its own process) ------------------------------------------------------


async def _load(url: str, calls: int, concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    next_call = iter(range(calls))
    deadline = time.perf_counter() + seconds

    async def caller(session: ClientSession) -> None:
        for n in next_call:
            if time.perf_counter() > deadline:
                return
            base = {
                "from": f"+7916{n % 10_000_000:07d}",
                "to": "+74951112233",
                "direction": "in",
                "callId": f"bench-{os.getpid()}-{n}",
            }
            # Every fifth call is missed: it registers a ticket.
            steps = [{"event": "newCall"}]
            if n % 5:
                steps.append({"event": "answer", "user": "anna"})
            steps.append({"event": "hangup", "cause": "normalClearing" if n % 5 else "noAnswer"})
            for step in steps:
                started = time.perf_counter()
                async with session.post(url, json={**base, **step}) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{response.status} for {step}")
                latencies.append(time.perf_counter() - started)

    connector = TCPConnector(limit=concurrency)
    async with ClientSession(connector=connector) as session:
        began = time.perf_counter()
        await asyncio.gather(*(caller(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "events": len(latencies),
        "seconds": elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99) - 1],
    }


def _run_load(url: str, args: argparse.Namespace) -> dict[str, float]:
    result = subprocess.run(
        [
            sys.executable,
            __file__,
            "--load",
            url,
            "--calls",
            str(args.calls),
            "--concurrency",
            str(args.concurrency),
            "--seconds",
            str(args.seconds),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(result.stdout))


# --- the servers ------------------------------------------------------------------------------


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


async def _intake_app(state: Path, process_events: bool) -> web.Application:
    from intake.app import desk_rules
    from intake.config import Settings
    from intake.desk import Desk
    from intake.http import create_app, http_context
    from storage.db import Database
    from storage.migrate import upgrade

    os.environ["BENCH_CTI_TOKEN"] = TOKEN
    settings = Settings.model_validate(
        {
            "daemon": {"state_dir": str(state)},
            "telephony": {"generic": {"enabled": True, "token_env": "BENCH_CTI_TOKEN"}},
        }
    )
    db = Database.from_url(settings.storage.sqlalchemy_url, pool_size=settings.storage.pool_size)
    upgrade(db.engine)
    return create_app(
        http_context(settings, db, Desk(desk_rules(settings))), process_events=process_events
    )


async def _bare_app() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="{}", content_type="application/json")

    app = web.Application()
    app.router.add_post("/api/v1/cti/{token}", ok)
    return app


class _DurableLog:
    """The floor's store: raw bodies appended to one SQLite table through the daemon's
    group commit, each caller answered after the commit that holds its body. What any
    handler that commits before answering must pay."""

    def __init__(self, path: Path) -> None:
        # The daemon's own engine setup, so the same PRAGMAs (WAL, synchronous): only the
        # plain connection is used, none of SQLAlchemy's per-statement work.
        self.engine = create_db_engine(f"sqlite:///{path}")
        self.pooled = self.engine.raw_connection()
        self.connection = cast(sqlite3.Connection, self.pooled.driver_connection)
        self.connection.execute("CREATE TABLE raw (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="floor-db")
        self.writer = GroupCommit("floor", self._commit, self.executor)

    async def append(self, body: bytes) -> None:
        await self.writer.write(body)

    def _commit(self, bodies: Sequence[bytes]) -> list[None]:
        self.connection.execute("BEGIN IMMEDIATE")
        try:
            self.connection.executemany("INSERT INTO raw (body) VALUES (?)", [(b,) for b in bodies])
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        self.connection.execute("COMMIT")
        return [None] * len(bodies)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.pooled.close()
        self.engine.dispose()


async def _floor_app(state: Path) -> web.Application:
    store = _DurableLog(state / "floor.sqlite3")

    async def keep(request: web.Request) -> web.Response:
        await store.append(await request.read())
        return web.Response(text="{}", content_type="application/json")

    async def closing(app: web.Application) -> AsyncIterator[None]:
        yield
        store.close()

    app = web.Application()
    app.router.add_post("/api/v1/cti/{token}", keep)
    app.cleanup_ctx.append(closing)
    return app


async def _measure(app: web.Application, args: argparse.Namespace) -> dict[str, float]:
    runner, port = await _serve(app)
    try:
        url = f"http://127.0.0.1:{port}/api/v1/cti/{TOKEN}"
        began, cpu = time.perf_counter(), time.process_time()
        result = await asyncio.get_running_loop().run_in_executor(None, _run_load, url, args)
        result["connections"] = args.concurrency
        # This process's CPU (the load runs in another): the budget each event spends.
        result["cpu_ms"] = 1000 * (time.process_time() - cpu) / result["events"]
        if WORKER in app and app[PROCESS_EVENTS]:
            # Acknowledged means stored; the calls and tickets follow. Until when?
            await app[WORKER].idle.wait()
            result["processed_after_s"] = time.perf_counter() - began
            result["total_cpu_ms"] = 1000 * (time.process_time() - cpu) / result["events"]
            result["not_done"] = await asyncio.to_thread(_not_done, app)
        return result
    finally:
        await runner.cleanup()


def _not_done(app: web.Application) -> int:
    """Stored events that are not done (failed, or left behind): none, if all went well."""
    from sqlalchemy import func, select

    from intake.http import CONTEXT
    from storage.models import InboundItem, InboundState

    with app[CONTEXT].db.transaction() as session:
        query = select(func.count()).where(InboundItem.state != InboundState.DONE)
        return int(session.scalar(query) or 0)


def _line(name: str, result: dict[str, float]) -> str:
    rate = result["events"] / result["seconds"]
    return (
        f"{name:<20} {int(result['events']):>6} events  {rate:>6.0f} events/s "
        f"({int(result['connections'])} conn.)  "
        f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms  "
        f"server CPU {result['cpu_ms']:.2f} ms/event"
    )


def _rate(result: dict[str, float]) -> float:
    return result["events"] / result["seconds"]


Servers = tuple[dict[str, float], dict[str, float], dict[str, float]]


async def _round(args: argparse.Namespace) -> dict[int, Servers]:
    """Each number of connections in turn, the three servers one after another at each."""
    measured = {}
    for connections in args.concurrency:
        load = argparse.Namespace(**{**vars(args), "concurrency": connections})
        with tempfile.TemporaryDirectory() as state:
            intake = await _measure(await _intake_app(Path(state), not args.ingest_only), load)
        bare = await _measure(await _bare_app(), load)
        with tempfile.TemporaryDirectory() as state:
            floor = await _measure(await _floor_app(Path(state)), load)
        measured[connections] = (intake, bare, floor)
    return measured


def _best(runs: Sequence[Servers]) -> Servers:
    """Each server at full speed: at the number of connections that gave it its best rate."""
    return cast(Servers, tuple(max((run[i] for run in runs), key=_rate) for i in range(3)))


def _median(rounds: Sequence[Servers]) -> tuple[Servers, list[float], list[float]]:
    """The round whose intake / bare ratio is the median, and every round's ratios (of
    intake and of the floor to bare), sorted."""
    ratios = sorted(_rate(intake) / _rate(bare) for intake, bare, _ in rounds)
    floor_ratios = sorted(_rate(floor) / _rate(bare) for _, bare, floor in rounds)
    middle = ratios[len(ratios) // 2]
    shown = next(r for r in rounds if _rate(r[0]) / _rate(r[1]) == middle)
    return shown, ratios, floor_ratios


def _share(ratios: Sequence[float]) -> str:
    median = f"{ratios[len(ratios) // 2]:.0%}"
    if len(ratios) == 1:
        return median
    return f"{median} (rounds: {', '.join(f'{r:.0%}' for r in ratios)})"


async def _main(args: argparse.Namespace) -> None:
    # The servers take turns, round after round, and each round's ratios are its own: the
    # machine's speed drifts by a third from one minute to the next, and a ratio of runs
    # minutes apart says more about the drift than about the servers.
    rounds = [await _round(args) for _ in range(args.rounds)]
    plural = "s" if args.rounds > 1 else ""
    print(
        f"{args.rounds} round{plural} of {', '.join(map(str, args.concurrency))} connections; "
        f"each line is the round whose intake / bare ratio is the median"
    )
    if len(args.concurrency) > 1:
        # Every number of connections, so that what full speed picks is in sight.
        print(
            f"{'connections':>11}  {'intake':>15} {'p99':>9}  {'bare':>15} {'p99':>9}  "
            f"{'floor':>15} {'p99':>9}  intake / bare      floor / bare"
        )
        for connections in args.concurrency:
            (intake, bare, floor), ratios, floor_ratios = _median(
                [measured[connections] for measured in rounds]
            )
            print(
                f"{connections:>11}  "
                + "  ".join(
                    f"{_rate(r):>8.0f} events/s {r['p99_ms']:>6.2f} ms"
                    for r in (intake, bare, floor)
                )
                + f"  {_share(ratios):<18} {_share(floor_ratios)}"
            )
        print("full speed: each server at the number of connections that gave it its best rate")
    (intake, bare, floor), ratios, floor_ratios = _median(
        [_best(list(measured.values())) for measured in rounds]
    )
    print(_line("intake generic CTI", intake))
    if "processed_after_s" in intake:
        print(
            f"{'':<22} all stored events processed (calls, missed-call tickets) "
            f"{intake['processed_after_s']:.1f} s after the load began "
            f"({intake['events'] / intake['processed_after_s']:.0f} events/s end to end, "
            f"server CPU {intake['total_cpu_ms']:.2f} ms/event in all); "
            f"not done: {int(intake['not_done'])}"
        )
    print(_line("bare aiohttp 200", bare))
    print(f"intake / bare: {_share(ratios)}   (targets: >= 1500 events/s, p99 < 50 ms, >= 50%)")
    print(_line("durable floor", floor))
    print(
        f"durable floor / bare: {_share(floor_ratios)}   (reference, not intake: each raw "
        "body committed to SQLite before the 200, nothing else)"
    )


def _counts(text: str) -> tuple[int, ...]:
    counts = tuple(int(part) for part in text.split(","))
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("connections: whole numbers of at least 1")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=5000, help="call triples at most")
    parser.add_argument(
        "--concurrency",
        type=_counts,
        default=(16, 32, 64),
        help="connections, or several (16,32,64): each server is measured at each, and its "
        "full speed is its best rate among them",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="time bound per run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three servers")
    parser.add_argument(
        "--ingest-only",
        action="store_true",
        help="keep and acknowledge only; the events are not acted on",
    )
    parser.add_argument("--load", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        (connections,) = args.concurrency
        print(json.dumps(asyncio.run(_load(args.load, args.calls, connections, args.seconds))))
        return
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
