"""XOAUTH2 against Dovecot's oauth2 passdb, which asks a token-introspection endpoint of ours."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from storage.db import Database
from tests.intake.imap.conftest import (
    Deliveries,
    MailboxFactory,
    make_message,
    quick_source,
    running,
    start_dovecot,
)
from tests.peers.dovecot import free_port


class Introspection:
    """RFC 7662 token introspection: the one valid token belongs to ``username``."""

    def __init__(self) -> None:
        self.valid: dict[str, str] = {}
        self.asked: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        token = str((await request.post()).get("token", ""))
        self.asked.append(token)
        username = self.valid.get(token)
        if username is None:
            return web.json_response({"active": False})
        return web.json_response({"active": True, "username": username})


@pytest.fixture
async def introspection() -> AsyncIterator[tuple[Introspection, str]]:
    endpoint = Introspection()
    app = web.Application()
    app.router.add_post("/introspect", endpoint.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield endpoint, f"http://127.0.0.1:{port}/introspect"
    await runner.cleanup()


async def test_xoauth2_login_reads_the_token_at_connect_and_stores_mail(
    db: Database,
    introspection: tuple[Introspection, str],
    mailbox_for: MailboxFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, url = introspection
    server = start_dovecot(oauth2_introspection_url=url)
    try:
        user = server.add_user()
        endpoint.valid["fresh-token-1"] = user.name
        monkeypatch.setenv("IMAP_TOKEN", "fresh-token-1")
        mailbox = mailbox_for(
            server, user, auth="xoauth2", password_env=None, token_env="IMAP_TOKEN"
        )
        server.append(user, [make_message()])
        deliveries = Deliveries()
        async with running(quick_source(db, mailbox, deliveries)):
            await deliveries.wait_for(1)
    finally:
        server.destroy()
    assert endpoint.asked == ["fresh-token-1"]
