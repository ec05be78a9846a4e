"""The `intake` command as an operator uses it, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL

from intake.cli import main

REQUIRED_TICKET_FIELDS = {
    "number",
    "status",
    "kind",
    "priority",
    "subject",
    "channel",
    "customer",
    "contact_email",
    "contact_phone",
    "assignee",
    "created_at",
    "updated_at",
    "close_reason",
}

Run = Callable[..., tuple[int, str, str]]


def _config(tmp_path: Path, url: URL | str) -> Path:
    rendered = url.render_as_string(hide_password=False) if isinstance(url, URL) else url
    path = tmp_path / "config.toml"
    path.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n\n[storage]\nurl = "{rendered}"\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture
def run(db_url: URL, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    config = _config(tmp_path, db_url)

    def invoke(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--config", str(config), *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


def _json(run: Run, *args: str) -> Any:
    code, out, err = run(*args, "--json")
    assert (code, err) == (0, "")
    return json.loads(out)


@pytest.fixture
def desk_with_people(run: Run) -> Run:
    assert run("customers", "add", "Acme", "--domain", "acme.example")[0] == 0
    assert run("customers", "add", "Globex", "--package", "premium")[0] == 0
    assert (
        run(
            "contacts",
            "add",
            "--customer",
            "Acme",
            "--email",
            "anna@acme.example",
            "--phone",
            "8 (495) 123-45-67",
            "--name",
            "Anna",
            "--responsible",
        )[0]
        == 0
    )
    assert run("contacts", "add", "--customer", "Acme", "--email", "ivan@acme.example")[0] == 0
    assert run("staff", "add", "alice", "--email", "alice@support.example")[0] == 0
    return run


def test_people_are_added_and_listed(desk_with_people: Run) -> None:
    run = desk_with_people
    assert [c["name"] for c in _json(run, "customers", "list")] == ["Acme", "Globex"]
    contacts = _json(run, "contacts", "list", "--customer", "Acme")
    assert {c["email"]: c["phone"] for c in contacts} == {
        "anna@acme.example": "+74951234567",
        "ivan@acme.example": None,
    }
    responsible = _json(run, "contacts", "list", "--responsible")
    assert [c["email"] for c in responsible] == ["anna@acme.example"]
    assert _json(run, "staff", "list") == [
        {
            "name": "alice",
            "email": "alice@support.example",
            "telegram_chat_id": None,
            "on_duty": True,
            "queues": ["support"],
        }
    ]
    code, out, _ = run("contacts", "list")
    assert code == 0
    assert out.splitlines()[0].split() == [
        "CUSTOMER",
        "NAME",
        "EMAIL",
        "PHONE",
        "LANG",
        "RESPONSIBLE",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("customers", "add", "Acme"), "error: customer 'Acme' already exists"),
        (
            ("customers", "add", "Initech", "--package", "gold"),
            "error: unknown support package 'gold'",
        ),
        (
            ("contacts", "add", "--customer", "Nope", "--email", "a@b.example"),
            "error: no customer 'Nope'",
        ),
        (
            ("contacts", "add", "--customer", "Acme", "--email", "not-an-address"),
            "error: invalid email address 'not-an-address'",
        ),
        (
            ("contacts", "add", "--customer", "Acme", "--phone", "12"),
            "error: invalid phone number '12'",
        ),
        (("tickets", "show", "OV-2026-999999"), "error: no ticket 'OV-2026-999999'"),
        (("tickets", "assign", "OV-2026-999999", "alice"), "error: no ticket 'OV-2026-999999'"),
        (("tickets", "list", "--customer", "Nope"), "error: no customer 'Nope'"),
    ],
)
def test_mistakes_are_one_line_and_a_non_zero_exit(
    desk_with_people: Run, args: tuple[str, ...], message: str
) -> None:
    code, out, err = desk_with_people(*args)
    assert code == 1
    assert out == ""
    assert err.startswith(message)
    assert len(err.strip().splitlines()) == 1


def _register(run: Run, subject: str, kind: str, customer: str = "Acme", *extra: str) -> str:
    data = _json(
        run,
        "tickets",
        "register",
        "--customer",
        customer,
        "--subject",
        subject,
        "--kind",
        kind,
        *extra,
    )
    number: str = data["number"]
    return number


def test_tickets_list_orders_by_priority_then_age_or_newest(desk_with_people: Run) -> None:
    run = desk_with_people
    first = _register(run, "how to export reports", "service_request")
    second = _register(
        run, "all operators offline", "problem", "Acme", "--contact", "anna@acme.example"
    )
    third = _register(run, "one agent cannot log in", "incident")
    fourth = _register(run, "another outage", "problem")
    by_priority = _json(run, "tickets", "list")
    assert [t["number"] for t in by_priority] == [second, fourth, third, first]
    assert set(by_priority[0]) >= REQUIRED_TICKET_FIELDS
    assert by_priority[0]["contact_email"] == "anna@acme.example"
    assert by_priority[0]["contact_phone"] == "+74951234567"
    assert by_priority[0]["assignee"] == "alice"
    newest = _json(run, "tickets", "list", "--order", "newest")
    assert [t["number"] for t in newest] == [fourth, third, second, first]
    assert [t["number"] for t in _json(run, "tickets", "list", "--priority", "P1")] == [
        second,
        fourth,
    ]
    premium = _register(run, "question", "service_request", "Globex")
    assert [t["number"] for t in _json(run, "tickets", "list", "--customer", "Globex")] == [premium]
    assert _json(run, "tickets", "list", "--customer", "Globex")[0]["priority"] == "P2"


def test_staff_works_a_ticket_through_to_closure(desk_with_people: Run) -> None:
    run = desk_with_people
    number = _register(
        run, "Softphone silent", "incident", "Acme", "--contact", "anna@acme.example"
    )
    assert run("tickets", "assign", number, "alice", "--actor", "lead") == (
        0,
        f"{number}: assigned to alice, in_progress\n",
        "",
    )
    code, _, err = run(
        "tickets",
        "set-status",
        number,
        "waiting_customer",
        "--note",
        "Which browser version?",
        "--actor",
        "alice",
    )
    assert (code, err) == (0, "")
    code, _, err = run("tickets", "set-status", number, "new")
    assert code == 1
    assert err == f"error: {number}: cannot go from waiting_customer to new\n"
    assert run("tickets", "set-status", number, "resolved", "--note", "Update to 3.2.1")[0] == 0
    code, _, err = run("tickets", "set-status", number, "closed")
    assert code == 1
    assert "needs a reason: confirmed, timeout, withdrawn" in err
    assert run("tickets", "set-status", number, "closed", "--reason", "confirmed")[0] == 0

    shown = _json(run, "tickets", "show", number)
    assert (shown["status"], shown["close_reason"]) == ("closed", "confirmed")
    assert [m["text"] for m in shown["messages"] if m["direction"] == "out"] == [
        "Which browser version?",
        "Update to 3.2.1",
    ]
    assert [(e["actor"], e["action"]) for e in shown["journal"]] == [
        ("cli", "registered"),
        ("system", "assigned"),
        ("lead", "assigned"),
        ("lead", "status_changed"),
        ("alice", "status_changed"),
        ("cli", "status_changed"),
        ("cli", "status_changed"),
    ]
    code, out, _ = run("tickets", "show", number)
    assert code == 0
    assert "status:    closed (confirmed)" in out
    assert "Update to 3.2.1" in out


def test_staff_overrides_the_priority(desk_with_people: Run) -> None:
    run = desk_with_people
    number = _register(run, "question", "service_request")
    assert run("tickets", "set-priority", number, "P1", "--reason", "CEO asks") == (
        0,
        f"{number}: P1\n",
        "",
    )
    journal = _json(run, "tickets", "show", number)["journal"]
    assert journal[-1]["details"] == {"from": "P3", "to": "P1", "reason": "CEO asks"}


def test_check_config_prints_ok_or_every_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _config(tmp_path, "sqlite:///x.sqlite3")
    assert main(["check-config", str(good)]) == 0
    assert capsys.readouterr().out == "OK\n"
    bad = tmp_path / "bad.toml"
    bad.write_text('[storage]\nurl = "mysq://x"\n[desk]\ncolour = "red"\n', encoding="utf-8")
    assert main(["check-config", str(bad)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "storage.url: unsupported scheme 'mysq'",
        "desk.colour: unknown key",
    ]


@pytest.mark.parametrize("fresh_database_url", ["sqlite", "postgresql"], indirect=True)
def test_db_upgrade_from_empty_then_nothing_to_do(
    fresh_database_url: URL, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(_config(tmp_path, fresh_database_url))
    assert main(["db", "upgrade", "--config", config]) == 0
    assert capsys.readouterr().out.startswith("database upgraded from empty to ")
    assert main(["--config", config, "db", "upgrade"]) == 0
    assert capsys.readouterr().out.startswith("database already at ")


def test_unreachable_database_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, "postgresql://nobody@127.0.0.1:1/none")
    assert main(["--config", str(config), "tickets", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: database unavailable: ")
    assert len(err.strip().splitlines()) == 1
