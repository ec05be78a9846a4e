"""Addresses that automatic mail must never go to: hard bounces, complaints, staff's choice.

Addresses are kept in lower case; mail systems treat the local part as case-sensitive in
theory, but nobody registers ``Anna@`` and ``anna@`` as two people.
"""

from __future__ import annotations

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage.models import Suppression, utcnow


def _key(address: str) -> str:
    return address.strip().lower()


def suppress(session: Session, address: str, reason: str) -> None:
    """Never mail ``address`` again; a second call keeps the first reason."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(
        insert(Suppression)
        .values(address=_key(address), reason=reason, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["address"])
    )


def suppression(session: Session, address: str) -> Suppression | None:
    return session.get(Suppression, _key(address))


def is_suppressed(session: Session, address: str) -> bool:
    return suppression(session, address) is not None
