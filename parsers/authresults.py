"""What the receiving mail server found of a mail's sender: Authentication-Results (RFC 8601).

Only a header that names our own server (its authserv-id) tells anything: a sender can
write any other into the mail, and a server strips the ones that claim its own name from
what it receives (RFC 8601, section 5). The first such header is the one our server added
last, on its way in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Comments, which may stand anywhere between tokens: "(sender IP is 192.0.2.1)".
_COMMENT = re.compile(r"\([^()]*\)")
_RESULT = re.compile(r"^\s*([a-z0-9-]+)\s*=\s*([a-z]+)\b", re.IGNORECASE)


def result_of(method: str, headers: Iterable[str], authserv_id: str) -> str | None:
    """The result ("pass", "fail", "none" …) of ``method`` (dmarc, dkim, spf) in the first
    Authentication-Results header from ``authserv_id``; None when there is none."""
    wanted = authserv_id.strip().casefold()
    for header in headers:
        text = header
        for _ in range(3):  # comments nest rarely, and never deep
            text = _COMMENT.sub(" ", text)
        server, _, results = text.partition(";")
        # "mx.example.com 1": an authserv-id and a version.
        names = server.split()
        if not names or names[0].casefold() != wanted:
            continue
        for resinfo in results.split(";"):
            found = _RESULT.match(resinfo)
            if found is not None and found.group(1).casefold() == method:
                return found.group(2).casefold()
        return None
    return None
