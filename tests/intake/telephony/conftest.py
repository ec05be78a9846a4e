from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import update

from intake.config import Settings
from intake.desk import Desk
from intake.http import CONTEXT, WORKER, create_app, http_context
from storage.db import Database
from storage.models import Call, utcnow
from tests.intake.conftest import RULES

CTI_TOKEN = "cti-token-0123456789"
CTI_SECRET = "cti-signature-secret"
OPERATOR_TOKEN = "operator-anna-token"

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def telephony_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTI_TOKEN", CTI_TOKEN)
    monkeypatch.setenv("CTI_SECRET", CTI_SECRET)
    monkeypatch.setenv("OPERATOR_ANNA_TOKEN", OPERATOR_TOKEN)


def settings_with(telephony: dict[str, Any] | None = None, **http: Any) -> Settings:
    generic = {"enabled": True, "token_env": "CTI_TOKEN", "blocked_numbers": ["+7 495 000-00-00"]}
    return Settings.model_validate(
        {
            "telephony": {"generic": generic, **(telephony or {})},
            "http": {"operators": [{"name": "anna", "token_env": "OPERATOR_ANNA_TOKEN"}], **http},
            "storage": {"url": "sqlite://"},
        }
    )


@pytest.fixture
def make_client(db: Database, telephony_env: None, aiohttp_client: Any) -> ClientFactory:
    async def make(settings: Settings | None = None) -> TestClient[Any, Any]:
        context = http_context(settings or settings_with(), db, Desk(RULES))
        app = create_app(context, process_events=False)
        client: TestClient[Any, Any] = await aiohttp_client(app)
        return client

    return make


async def processed(client: TestClient[Any, Any]) -> None:
    """Act on every call event stored so far, as the app's worker does."""
    await client.app[WORKER].drain()


# The providers that sign with a shared secret, each reading it from the environment
# (the tests that use them set it).
PROVIDERS: dict[str, dict[str, Any]] = {
    "twilio": {"enabled": True, "auth_token_env": "TWILIO_TOKEN"},
    "zadarma": {"enabled": True, "api_secret_env": "ZADARMA_SECRET"},
    "mango": {"enabled": True, "api_key_env": "MANGO_KEY", "api_salt_env": "MANGO_SALT"},
}
SECOND = dt.timedelta(seconds=1)


async def settled(client: TestClient[Any, Any]) -> None:
    """As if the time that ended calls wait for their other legs had passed: the calls
    waiting are told to the desk, as the app's worker tells them when they are due."""
    await processed(client)
    db = client.app[CONTEXT].db
    with db.transaction() as session:
        session.execute(
            update(Call).where(Call.tell_at.is_not(None)).values(tell_at=utcnow() - SECOND)
        )
    await processed(client)
