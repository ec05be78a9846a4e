"""A local HTTP server that answers like the Telegram Bot API, for python-telegram-bot.

The library is pointed at it with ``base_url``; the server records every call (method and
parameters) and answers ``getMe`` and ``sendMessage`` as Telegram does. Planned failures
(a 429 with ``retry_after``, a 400) are answered first, in order.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKEN = "123456:TEST-token"


@dataclass(frozen=True)
class Call:
    method: str
    params: dict[str, Any]


@dataclass
class BotApi:
    calls: list[Call] = field(default_factory=list)
    planned: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None
    url: str = ""

    def flood(self, retry_after: int) -> None:
        self.planned.append(
            (
                429,
                {
                    "ok": False,
                    "error_code": 429,
                    "description": f"Too Many Requests: retry after {retry_after}",
                    "parameters": {"retry_after": retry_after},
                },
            )
        )

    def refuse(self, description: str) -> None:
        self.planned.append((400, {"ok": False, "error_code": 400, "description": description}))

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [call.params for call in self.calls if call.method == "sendMessage"]

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != TOKEN:
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401
            )
        method = request.match_info["method"]
        if request.content_type == "application/json":
            params = await request.json()
        else:
            params = dict(await request.post())
        self.calls.append(Call(method, {k: _decoded(v) for k, v in params.items()}))
        if method == "getMe":
            return web.json_response({"ok": True, "result": _bot_user()})
        if self.planned:
            status, body = self.planned.pop(0)
            return web.json_response(body, status=status)
        if method == "sendMessage":
            return web.json_response({"ok": True, "result": self._message(params)})
        return web.json_response(
            {"ok": False, "error_code": 404, "description": "Not Found"}, status=404
        )

    def _message(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        return {
            "message_id": next(self._ids),
            "date": 1_790_000_000,
            "chat": {"id": chat_id, "type": "group" if chat_id < 0 else "private"},
            "from": _bot_user(),
            "text": params["text"],
        }

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _decoded(value: Any) -> Any:
    # Form-encoded parameters arrive as strings; structured ones as JSON text.
    if isinstance(value, str) and value[:1] in "{[":
        return json.loads(value)
    return value


def _bot_user() -> dict[str, Any]:
    return {"id": 123456, "is_bot": True, "first_name": "OmniVOX Intake", "username": "ov_bot"}
