"""Alembic environment: the engine is handed in by storage.migrate, never read from an ini."""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from sqlalchemy import Engine

from storage.models import Base, UTCDateTime


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    # Migrations stay free of imports from the models, which change after they are written.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_migrations_online() -> None:
    engine = context.config.attributes["engine"]
    assert isinstance(engine, Engine)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_item=_render_item,
            render_as_batch=True,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations_online()
