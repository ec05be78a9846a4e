"""The API document is served and every endpoint keeps to it (schemathesis, real loopback)."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from nacl.signing import SigningKey
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from intake.daemon import supervise
from intake.desk import Desk
from intake.http import HttpService, http_context
from intake.openapi import openapi_document
from storage.db import Database
from tests.intake.conftest import RULES
from tests.intake.telephony.conftest import CTI_TOKEN, OPERATOR_TOKEN, settings_with


class LiveServer:
    """The HTTP service on a free loopback port, in a loop of its own thread."""

    def __init__(self, service: HttpService) -> None:
        self.service = service
        self.ready = threading.Event()
        self.thread = threading.Thread(target=asyncio.run, args=(self._main(),))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping: asyncio.Event | None = None

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        task = asyncio.create_task(self.service.run(self.stopping))
        await self.service.started.wait()
        self.ready.set()
        await task

    def __enter__(self) -> str:
        self.thread.start()
        assert self.ready.wait(10), "the HTTP service did not start"
        return f"http://127.0.0.1:{self.service.bound_port}"

    def __exit__(self, *_: object) -> None:
        assert self.loop is not None
        assert self.stopping is not None
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(10)


@pytest.fixture
def live_api(db: Database, telephony_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name in ("TWILIO_TOKEN", "ZADARMA_SECRET", "MANGO_KEY", "MANGO_SALT"):
        monkeypatch.setenv(name, name.lower())
    public = base64.b64encode(bytes(SigningKey.generate().verify_key)).decode()
    config = settings_with(
        {
            "twilio": {"enabled": True, "auth_token_env": "TWILIO_TOKEN"},
            "zadarma": {"enabled": True, "api_secret_env": "ZADARMA_SECRET"},
            "mango": {"enabled": True, "api_key_env": "MANGO_KEY", "api_salt_env": "MANGO_SALT"},
            "telnyx": {"enabled": True, "public_key": public},
        },
        max_body_size=64 * 1024,
    )
    service = HttpService(http_context(config, db, Desk(RULES)), "127.0.0.1", 0)
    with LiveServer(service) as url:
        yield url


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_every_endpoint_answers_within_its_schema_and_never_with_a_5xx(live_api: str) -> None:
    schema = schemathesis.openapi.from_url(f"{live_api}/api/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/healthz", "/api/v1/calls", "/api/v1/cti/{token}"}

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def keeps_to_the_schema(case: Any) -> None:
            if "token" in (case.path_parameters or {}):
                case.path_parameters["token"] = CTI_TOKEN
            case.call_and_validate(
                base_url=live_api,
                headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
                checks=CHECKS,
            )

        keeps_to_the_schema()


async def test_a_request_stalled_at_shutdown_is_cut_off_in_time_for_the_storage_to_wind_down(
    db: Database, telephony_env: None
) -> None:
    # A client that sends half its body and stalls: the daemon's shutdown timeout must not
    # run out while aiohttp waits for it, or the worker and the storage thread are left.
    service = HttpService(
        http_context(settings_with(), db, Desk(RULES)), "127.0.0.1", 0, requests_grace=0.3
    )
    stopping = asyncio.Event()
    running = asyncio.create_task(supervise([service], shutdown_timeout=2.0, stopping=stopping))
    await service.started.wait()
    _, writer = await asyncio.open_connection("127.0.0.1", service.bound_port)
    writer.write(
        f"POST /api/v1/cti/{CTI_TOKEN} HTTP/1.1\r\nHost: pbx\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
    )
    await writer.drain()
    await asyncio.sleep(0.2)

    stopping.set()
    await running

    writer.close()
    left = [task.get_coro() for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    assert not [coro for coro in left if "CallEventWorker" in getattr(coro, "__qualname__", "")]
    assert not [t.name for t in threading.enumerate() if t.name.startswith("http-db")]


def test_the_document_names_what_each_request_must_carry(
    db: Database, telephony_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("TWILIO_TOKEN", "ZADARMA_SECRET"):
        monkeypatch.setenv(name, name.lower())
    config = settings_with(
        {
            "twilio": {"enabled": True, "auth_token_env": "TWILIO_TOKEN"},
            "zadarma": {"enabled": True, "api_secret_env": "ZADARMA_SECRET"},
        }
    )
    paths = openapi_document(http_context(config, db, Desk(RULES)).adapters)["paths"]

    def carried(path: str, method: str) -> set[tuple[str, str]]:
        return {(p["in"], p["name"]) for p in paths[path][method].get("parameters", [])}

    assert carried("/api/v1/telephony/zadarma", "get") == {("query", "zd_echo")}
    # A URL check keeps nothing and checks no signature.
    assert set(paths["/api/v1/telephony/zadarma"]["get"]["responses"]) == {"200", "422"}
    assert carried("/api/v1/telephony/zadarma", "post") == {("header", "Signature")}
    assert carried("/api/v1/telephony/twilio/status", "post") == {
        ("header", "X-Twilio-Signature")
    }
    # The generic CTI's signature is on only with a secret (none here).
    assert carried("/api/v1/cti/{token}", "post") == {("path", "token")}
    assert "multipart/form-data" in paths["/api/v1/cti/{token}"]["post"]["requestBody"]["content"]
