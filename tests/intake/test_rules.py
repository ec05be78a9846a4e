"""The rules before registration, on mail as real clients and servers write it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from intake.rules import Decision, DuplicateRuleError, RuleContext, check_unique, decide
from intake.rules.builtin import builtin_rules
from intake.rules.empty import EMPTY
from parsers.headers import split_header_block
from parsers.request import parse_mail
from tests.intake.mailmaker import OUR_ADDRESS, OUR_DOMAIN, mail_bytes

CORPUS = Path(__file__).parents[1] / "data" / "mail"


def decision_for(raw: bytes) -> Decision | None:
    headers, _, _ = split_header_block(raw, 0, len(raw))
    context = RuleContext(headers, OUR_DOMAIN, OUR_ADDRESS)
    return decide(builtin_rules(), parse_mail(raw), context)


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("exchange_oof.eml", "auto-reply"),
        ("x_autoreply.eml", "auto-reply"),
        ("auto_submitted_ooo.eml", "auto-reply"),
        ("ooo_subject_only.eml", "auto-reply"),
        ("precedence_bulk.eml", "auto-reply"),
        ("list_id.eml", "auto-reply"),
        ("read_receipt.eml", "auto-reply"),
        ("bounce_report_rfc822.eml", "bounce"),
        ("bounce_report_headers.eml", "bounce"),
        ("bounce_plain_text.eml", "bounce"),
        ("empty_file.eml", "empty"),
    ],
)
def test_automatic_and_empty_mail_is_set_aside_by_its_rule(name: str, rule: str) -> None:
    decision = decision_for((CORPUS / name).read_bytes())
    assert decision is not None
    assert decision.rule == rule
    assert decision.reason


@pytest.mark.parametrize(
    "name", ["incident_en.eml", "gmail_ru_reply.eml", "service_request_ru.eml", "headers_only.eml"]
)
def test_customer_mail_passes_every_rule(name: str) -> None:
    assert decision_for((CORPUS / name).read_bytes()) is None


def test_bounce_names_the_message_that_was_not_delivered() -> None:
    decision = decision_for((CORPUS / "bounce_report_rfc822.eml").read_bytes())
    assert decision is not None
    assert decision.bounced_message_id == "<ack200@omnivox.ru>"


@pytest.mark.parametrize(
    ("headers", "message_id", "sender"),
    [
        ({}, f"<x1@{OUR_DOMAIN}>", "anna@acme.example"),
        ({"X-Loop": OUR_ADDRESS}, "<x2@acme.example>", "anna@acme.example"),
        ({}, "<x3@acme.example>", OUR_ADDRESS),
    ],
)
def test_our_own_mail_is_recognised_as_a_loop(
    headers: dict[str, str], message_id: str, sender: str
) -> None:
    raw = mail_bytes(subject="Re: x", headers=headers, message_id=message_id, sender=sender)
    decision = decision_for(raw)
    assert decision is not None
    assert decision.rule == "loop"


def test_mail_with_only_a_subject_is_not_empty() -> None:
    assert decision_for(mail_bytes(subject="Softphone does not ring", body="")) is None


def test_rules_have_kebab_case_names_and_a_description() -> None:
    for rule in builtin_rules():
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", rule.name)
        assert rule.description


def test_two_rules_with_one_name_fail_at_start_up() -> None:
    with pytest.raises(DuplicateRuleError, match="'empty'"):
        check_unique((*builtin_rules(), EMPTY))
