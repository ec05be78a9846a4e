"""`intake inbound` as an operator uses it: list, show, retry, export."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from intake.cli import main
from storage import inbound
from storage.db import Database
from storage.models import InboundItem, InboundState
from tests.intake.mailmaker import mail_bytes

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(db_url: URL, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    rendered = db_url.render_as_string(hide_password=False)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n\n[storage]\nurl = "{rendered}"\n',
        encoding="utf-8",
    )

    def invoke(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--config", str(config), *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


# Bare LF, 8-bit bytes and no final newline: export must give back exactly these bytes.
RAW = mail_bytes(subject="Broken", message_id="<q@acme.example>") + b"\n\xff\xfe tail"


@pytest.fixture
def quarantined(db: Database) -> int:
    with db.transaction() as session:
        item_id = inbound.store(
            session,
            source="smtp",
            source_ref="<q@acme.example>",
            raw=RAW,
            message_id="<q@acme.example>",
        ).id
        inbound.store(session, source="smtp", source_ref="<p@acme.example>", raw=b"x")
    with db.transaction() as session:
        inbound.claim(session, limit=1)
        inbound.failed(session, item_id, error="KeyError: 'branch'", max_attempts=1)
    return item_id


def test_list_filters_by_state(run: Run, quarantined: int) -> None:
    code, out, err = run("inbound", "list", "--state", "quarantined", "--json")
    assert (code, err) == (0, "")
    (row,) = json.loads(out)
    assert (row["id"], row["state"], row["attempts"]) == (quarantined, "quarantined", 1)
    assert row["error"] == "KeyError: 'branch'"
    code, out, _ = run("inbound", "list")
    assert code == 0
    assert out.splitlines()[0].split() == [
        "ID",
        "STATE",
        "TRIES",
        "SOURCE",
        "RECEIVED",
        "TICKET",
        "MESSAGE-ID",
        "REASON",
    ]
    assert len(out.splitlines()) == 3


def test_show_gives_headers_state_error_and_attempts(run: Run, quarantined: int) -> None:
    code, out, err = run("inbound", "show", str(quarantined), "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["headers"]["subject"] == "Broken"
    assert data["headers"]["message-id"] == "<q@acme.example>"
    assert (data["state"], data["attempts"], data["ticket"]) == ("quarantined", 1, None)
    code, out, _ = run("inbound", "show", str(quarantined))
    assert code == 0
    assert "error:     KeyError: 'branch'" in out
    assert "subject: Broken" in out


def test_retry_brings_a_quarantined_item_back(run: Run, quarantined: int, db: Database) -> None:
    assert run("inbound", "retry", str(quarantined))[:2] == (
        0,
        f"inbound {quarantined} queued again\n",
    )
    code, _, err = run("inbound", "retry", str(quarantined))
    assert code == 1
    assert err == f"error: inbound item {quarantined} is pending; nothing to retry\n"
    with db.transaction() as session:
        claimed = {i.id: i.attempts for i in inbound.claim(session, limit=5)}
        state = session.get_one(InboundItem, quarantined).state
    assert (claimed[quarantined], state) == (1, InboundState.PROCESSING)


def test_retry_all_quarantined(run: Run, quarantined: int) -> None:
    assert run("inbound", "retry", "--all-quarantined")[:2] == (
        0,
        "1 quarantined item queued again\n",
    )
    code, _, err = run("inbound", "retry")
    assert code == 2
    assert "give an ID or --all-quarantined" in err


def test_export_writes_the_bytes_exactly_as_received(
    run: Run, quarantined: int, tmp_path: Path
) -> None:
    target = tmp_path / "out.eml"
    code, out, _ = run("inbound", "export", str(quarantined), str(target))
    assert code == 0
    assert target.read_bytes() == RAW
    assert out == f"inbound {quarantined}: {len(RAW)} bytes written to {target}\n"


def test_unknown_item_is_a_one_line_error(run: Run) -> None:
    assert run("inbound", "show", "999") == (1, "", "error: no inbound item 999\n")
