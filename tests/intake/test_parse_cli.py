"""`intake parse FILE.eml`: the admin's view of how one mail was read."""

from __future__ import annotations

import io
import json
from email.message import EmailMessage
from pathlib import Path

import pytest
from PIL import Image

from intake.cli import main
from intake.parsing import number_tag_pattern

REQUIRED = {
    "subject",
    "from",
    "to",
    "cc",
    "date",
    "message_id",
    "in_reply_to",
    "references",
    "language",
    "text",
    "new_text",
    "quoted_text",
    "kind",
    "priority",
    "environment",
    "screenshots",
    "attachments",
    "missing",
    "is_auto_reply",
    "auto_reply_reason",
    "registration_number",
    "warnings",
}
MAIL = (
    b"From: Anna <anna@acme.example>\r\nTo: support@omnivox.example\r\n"
    b"Subject: Re: [OV-2026-000123] softphone\r\nMessage-ID: <m1@acme.example>\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    + "Не работает софтфон.\r\nВерсия OmniVOX: 3.2.1\r\n".encode()
)


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_has_every_field_the_admin_relies_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mail.eml"
    path.write_bytes(MAIL)
    code, out, err = _run(capsys, "parse", str(path), "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert set(data) >= REQUIRED
    assert data["registration_number"] == "OV-2026-000123"
    assert data["environment"]["product_version"] == "3.2.1"


def test_text_report_for_humans(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mail.eml"
    path.write_bytes(MAIL)
    code, out, _ = _run(capsys, "parse", str(path))
    assert code == 0
    assert "OV-2026-000123" in out
    assert "3.2.1" in out


@pytest.mark.parametrize("content", [b"", b"\x00\xff garbage \r\n\r\n", b"Subject: only"])
def test_any_file_exits_zero_however_broken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    path = tmp_path / "broken.eml"
    path.write_bytes(content)
    assert _run(capsys, "parse", str(path), "--json")[0] == 0


@pytest.mark.parametrize(
    ("name", "reason"), [("nope.eml", "No such file or directory"), ("", "Is a directory")]
)
def test_unreadable_path_is_one_line_and_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, reason: str
) -> None:
    path = tmp_path / name
    code, out, err = _run(capsys, "parse", str(path))
    assert code == 1
    assert out == ""
    assert err == f"error: {path}: {reason}\n"


def test_parse_needs_no_secrets_of_the_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[storage]\npassword_env = "INTAKE_TEST_UNSET_SECRET"\n', encoding="utf-8")
    path = tmp_path / "mail.eml"
    path.write_bytes(MAIL)
    assert _run(capsys, "--config", str(config), "parse", str(path))[0] == 0
    code, _, err = _run(capsys, "check-config", str(config))
    assert code == 2
    assert "INTAKE_TEST_UNSET_SECRET is not set" in err


def test_classify_section_replaces_the_built_in_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[classify]\nproblem = ["авария"]\ntags = { "\\\\[bug\\\\]" = "incident" }\n'
        'default_kind = "service_request"\n',
        encoding="utf-8",
    )

    def kind(subject: str, body: str) -> tuple[str, str]:
        path = tmp_path / "mail.eml"
        path.write_bytes(
            f"From: a@acme.example\r\nSubject: {subject}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n".encode()
            + body.encode()
        )
        code, out, err = _run(capsys, "--config", str(config), "parse", str(path), "--json")
        assert (code, err) == (0, "")
        data = json.loads(out)
        return data["kind"], data["priority"]

    assert kind("Авария на площадке", "Всё стоит.") == ("problem", "P1")
    assert kind("[bug] отчёт", "Цифры не сходятся.") == ("incident", "P2")
    assert kind("Добрый день", "Расскажите о тарифах.") == ("service_request", "P3")


def test_configured_number_format_decides_the_tag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[desk]\nnumber_format = "SUP-{seq:05d}"\n', encoding="utf-8")
    path = tmp_path / "mail.eml"
    path.write_bytes(MAIL.replace(b"[OV-2026-000123]", b"[sup-00042]"))
    code, out, _ = _run(capsys, "--config", str(config), "parse", str(path), "--json")
    assert code == 0
    assert json.loads(out)["registration_number"].upper() == "SUP-00042"


@pytest.mark.parametrize(
    ("number_format", "subject", "found"),
    [
        ("OV-{year}-{seq:06d}", "Re: [OV-2026-000123] x", "OV-2026-000123"),
        ("OV-{year}-{seq:06d}", "Re: [ ov-2026-000123 ] x", "ov-2026-000123"),
        ("OV-{year}-{seq:06d}", "Re: [OV-26-000123] x", None),
        ("{year}/{seq}", "[2026/7] x", "2026/7"),
        ("HD{seq:04d}", "[HD0042]", "HD0042"),
    ],
)
def test_number_tag_follows_the_number_format(
    number_format: str, subject: str, found: str | None
) -> None:
    match = number_tag_pattern(number_format).search(subject)
    assert (match.group(1) if match else None) == found


def test_json_lists_screenshots_and_attachments_with_their_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = io.BytesIO()
    Image.new("RGB", (64, 48), "red").save(image, format="PNG")
    mail = EmailMessage()
    mail["From"] = "anna@acme.example"
    mail["Subject"] = "Экран зависает"
    mail.set_content("Браузер: Chrome 120\nОС: Windows 11\n")
    mail.add_attachment(image.getvalue(), maintype="image", subtype="png", filename="s.png")
    mail.add_attachment(b"log line\n", maintype="text", subtype="plain", filename="agent.log")
    path = tmp_path / "mail.eml"
    path.write_bytes(mail.as_bytes())
    code, out, _ = _run(capsys, "parse", str(path), "--json")
    assert code == 0
    data = json.loads(out)
    assert set(data["environment"]) == {
        "os",
        "os_version",
        "product",
        "product_version",
        "browser",
        "browser_version",
    }
    (shot,) = data["screenshots"]
    assert {k: shot[k] for k in ("filename", "content_type", "width", "height")} == {
        "filename": "s.png",
        "content_type": "image/png",
        "width": 64,
        "height": 48,
    }
    assert set(shot) >= {"size", "sha256"}
    (log,) = data["attachments"]
    assert set(log) >= {"filename", "content_type", "size", "sha256"}
    assert log["filename"] == "agent.log"
    assert {"product", "product_version"} <= set(data["missing"])
