"""The receiving server's verdict on a sender, from Authentication-Results (RFC 8601)."""

from __future__ import annotations

import pytest

from parsers.authresults import result_of

OURS = "mx.support.example"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([f"{OURS}; spf=pass smtp.mailfrom=acme.example; dmarc=pass header.from=acme"], "pass"),
        ([f"{OURS} 1; dkim=pass header.d=acme.example; DMARC=Fail header.from=acme"], "fail"),
        # Comments anywhere, case of the server's name.
        (["MX.Support.Example (our MX); dmarc=pass (p=reject) header.from=acme.example"], "pass"),
        # Another server's word, however favourable, counts for nothing; ours comes first.
        (["mx.attacker.example; dmarc=pass header.from=acme.example"], None),
        ([f"{OURS}; dmarc=fail", f"{OURS}; dmarc=pass"], "fail"),
        ([f"{OURS}; none"], None),
        ([f"{OURS}; spf=pass smtp.mailfrom=acme.example"], None),
        ([], None),
        (["garbage without any structure", ";;;", "(((("], None),
    ],
)
def test_dmarc_result_from_our_own_server(headers: list[str], expected: str | None) -> None:
    assert result_of("dmarc", headers, OURS) == expected
