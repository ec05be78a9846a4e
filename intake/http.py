"""The HTTP listener: telephony webhooks, the operators' call log, health, the API document.

An aiohttp application from :func:`create_app`, served by :class:`HttpService` in the
daemon's own loop. Handlers are thin: verify, keep the raw request, answer; storage work
runs on a small thread pool of the app's own (the database layer is synchronous).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TypeVar

from aiohttp import web

from intake.calls import CallPolicy, CallRecorder, Received
from intake.config import Settings, TelephonyProviderSettings
from intake.desk import Desk, DeskError
from intake.groupcommit import GroupCommit
from intake.openapi import openapi_document
from intake.operators import CallLogError, log_call, parse_call_log
from intake.services import Service, cannot_listen
from intake.sources.telephony.base import (
    AdapterContext,
    TelephonyAdapter,
    WebhookError,
    WebhookRequest,
    equal,
    fit_for_storage,
)
from intake.sources.telephony.registry import build_adapters
from intake.sources.telephony.worker import CallEventWorker
from storage.db import Database, unavailable
from storage.models import Priority

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class HttpContext:
    """What the HTTP parts need, built once at start (secrets read, adapters built)."""

    db: Database
    desk: Desk
    recorder: CallRecorder
    adapters: Sequence[TelephonyAdapter]
    # Operator name -> bearer token.
    operators: Mapping[str, str]
    max_body_size: int
    default_region: str
    unassigned_customer: str
    storage_threads: int = 4
    # Seconds between looks for call events stored by other daemons or due for a retry.
    poll_interval: float = 5.0


def http_context(settings: Settings, db: Database, desk: Desk) -> HttpContext:
    """From the settings; RegistryError or SecretError when they cannot be used."""
    telephony = settings.telephony
    enabled = telephony.enabled()
    policy = CallPolicy(
        default_region=telephony.default_region,
        missed_call_priority=Priority(telephony.missed_call_priority),
        provider_priority={
            name: Priority(table.missed_call_priority)
            for name, table in enabled.items()
            if isinstance(table, TelephonyProviderSettings) and table.missed_call_priority
        },
        unassigned_customer=settings.pipeline.unassigned_customer,
        max_attempts=settings.pipeline.max_attempts,
    )
    adapters = build_adapters(enabled, AdapterContext(telephony.default_region))
    # How long a provider's calls wait for the events of their other legs: as configured,
    # or else as its adapter says.
    settle = {}
    for adapter in adapters:
        table = enabled.get(adapter.name)
        configured = table.settle_seconds if isinstance(table, TelephonyProviderSettings) else None
        settle[adapter.name] = (
            float(getattr(adapter, "settle", 0.0)) if configured is None else configured
        )
    policy = replace(policy, settle=settle)
    return HttpContext(
        db=db,
        desk=desk,
        recorder=CallRecorder(db, desk, policy),
        adapters=adapters,
        operators={op.name: op.token.read() for op in settings.http.operators},
        max_body_size=settings.http.max_body_size,
        default_region=telephony.default_region,
        unassigned_customer=settings.pipeline.unassigned_customer,
        # SQLite has one writer: more threads would only queue on its lock, sleeping.
        storage_threads=1 if db.dialect == "sqlite" else settings.storage.pool_size,
        poll_interval=settings.pipeline.poll_interval,
    )


CONTEXT = web.AppKey("context", HttpContext)
DOCUMENT = web.AppKey("document", bytes)


# Webhooks that arrive while a transaction is being written share the next commit
# (:class:`GroupCommit`); each is answered only after the commit that holds its request,
# and a request that fails its batch is written again alone.
WRITER = web.AppKey("writer", GroupCommit[Received, bool])
WORKER = web.AppKey("worker", CallEventWorker)
PROCESS_EVENTS = web.AppKey("process_events", bool)


async def _storage(app: web.Application) -> AsyncIterator[None]:
    """The storage thread(s), the webhooks' writer, and the worker acting on their events."""
    context = app[CONTEXT]
    executor = ThreadPoolExecutor(context.storage_threads, thread_name_prefix="http-db")
    worker = CallEventWorker(
        context.recorder, context.adapters, executor, poll_interval=context.poll_interval
    )
    app[WORKER] = worker
    # The worker is woken after each commit to act on the events.
    app[WRITER] = GroupCommit(
        "webhooks",
        context.recorder.store,
        executor,
        committed=worker.notify,
        unavailable=unavailable,
    )
    stopping = asyncio.Event()
    task = asyncio.create_task(worker.run(stopping)) if app[PROCESS_EVENTS] else None
    yield
    try:
        # Requests still being written are answered before their storage thread goes.
        await app[WRITER].idle()
        stopping.set()
        if task is not None:
            await task
        if context.db.dialect == "sqlite":
            # The one storage thread gives back the connection it kept.
            await asyncio.get_running_loop().run_in_executor(executor, context.db.release_held)
    except BaseException:
        # Cut short (cancelled when the daemon's shutdown timeout ran out): the worker is
        # stopped where it is, and the thread ends once its work in hand has.
        if task is not None:
            task.cancel()
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    executor.shutdown(wait=True)


async def _in_thread(request: web.Request, work: Callable[[], T]) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(request.app[WORKER].executor, work)


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


# --- health and the API document ------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[DOCUMENT], content_type="application/json")


# --- telephony ------------------------------------------------------------------------------


def webhook_handler(
    adapter: TelephonyAdapter,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        resource = request.match_info.route.resource
        received = WebhookRequest(
            request.method,
            # Only an adapter that signs the URL (Twilio) has it built.
            lambda: str(request.url),
            resource.canonical if resource else request.path,
            request.query,
            request.headers,
            body,
            request.match_info,
            request.raw_headers,
        )
        try:
            adapter.verify(received, time.time())
            normalised = fit_for_storage(adapter.normalise(received))
        except WebhookError as error:
            # The path is not logged: the generic CTI's carries its token.
            log.warning("%s: refused a request: %s", adapter.name, error.reason)
            return _error(error.status, error.reason)
        if normalised.source_ref is not None:
            item = Received(
                adapter.name,
                normalised.source_ref,
                received.to_raw(),
                normalised.events,
                normalised.ignored,
            )
            try:
                await request.app[WRITER].write(item)
            except Exception as error:
                # Not stored: the provider must deliver it again.
                log.exception("%s:%s: cannot store the event", adapter.name, normalised.source_ref)
                if unavailable(error):
                    return _error(503, "storage unavailable; retry later")
                # Not the database's state but this request (what the checks above let
                # through): retrying would not help it.
                return _error(500, "the event could not be stored")
        reply = normalised.reply
        return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type)

    return handle


# --- the operators' call log ------------------------------------------------------------------


def _operator(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    found = None
    # Every token is compared, so that timing tells nothing about which one nearly matched.
    for name, expected in request.app[CONTEXT].operators.items():
        if equal(token.strip(), expected):
            found = name
    return found


async def log_call_handler(request: web.Request) -> web.Response:
    operator = _operator(request)
    if operator is None:
        return web.json_response(
            {"error": "a valid operator bearer token is required"},
            status=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    body = await request.read()
    try:
        entry = parse_call_log(json.loads(body))
    except (ValueError, RecursionError):
        return web.json_response({"errors": {"body": "must be a JSON object"}}, status=422)
    except CallLogError as error:
        return web.json_response({"errors": error.errors}, status=422)
    context = request.app[CONTEXT]

    def work() -> tuple[str, bool]:
        with context.db.transaction() as session:
            ticket = log_call(
                session,
                context.desk,
                entry,
                operator=operator,
                region=context.default_region,
                unassigned_customer=context.unassigned_customer,
            )
            return ticket.number, entry.ticket is None

    try:
        number, created = await _in_thread(request, work)
    except CallLogError as error:
        return web.json_response({"errors": error.errors}, status=422)
    except DeskError as error:
        return web.json_response({"errors": {"body": str(error)}}, status=422)
    log.info("%s: call logged by operator %s", number, operator)
    return web.json_response({"number": number, "created": created}, status=201 if created else 200)


# --- the application ------------------------------------------------------------------------


def create_app(context: HttpContext, *, process_events: bool = True) -> web.Application:
    """The application; ``process_events=False`` leaves stored call events to the caller
    (``app[WORKER].drain()``), for tests that look between two steps."""
    app = web.Application(client_max_size=context.max_body_size)
    app[CONTEXT] = context
    app[PROCESS_EVENTS] = process_events
    app.cleanup_ctx.append(_storage)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/openapi.json", openapi)
    app.router.add_post("/api/v1/calls", log_call_handler)
    for adapter in context.adapters:
        handler = webhook_handler(adapter)
        for route in adapter.routes:
            app.router.add_route(route.method, route.path, handler)
    app[DOCUMENT] = json.dumps(openapi_document(context.adapters)).encode()
    return app


class HttpService:
    name = "http"
    description = "HTTP listener: telephony webhooks, operators' call log, health"

    def __init__(
        self, context: HttpContext, host: str, port: int, *, requests_grace: float = 5.0
    ) -> None:
        self.context = context
        self.host = host
        self.port = port
        # Seconds that requests in progress get to finish when the service stops, before
        # they are cut off and the storage thread is wound down: less than the daemon's
        # shutdown timeout, or the winding down would itself be cut short.
        self.requests_grace = requests_grace
        self.started = asyncio.Event()
        self.bound_port: int | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        runner = web.AppRunner(
            create_app(self.context), access_log=None, shutdown_timeout=self.requests_grace
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            try:
                await site.start()
            except OSError as error:
                raise cannot_listen("http", self.host, self.port, error) from None
            self.bound_port = runner.addresses[0][1]
            log.info("http: listening on %s:%d", self.host, self.bound_port)
            self.started.set()
            await stopping.wait()
        finally:
            await runner.cleanup()


def http_services(settings: Settings, db: Database, desk: Desk) -> list[Service]:
    """The HTTP listener (with the worker acting on call events), when [http] is enabled."""
    if not settings.http.enabled:
        return []
    # Half of the daemon's time to stop for the requests in progress; the rest for the
    # storage thread to finish their commit and the worker its batch.
    return [
        HttpService(
            http_context(settings, db, desk),
            settings.http.host,
            settings.http.port,
            requests_grace=settings.daemon.shutdown_timeout / 2,
        )
    ]
