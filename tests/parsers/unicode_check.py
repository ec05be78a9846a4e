"""Every string the parser hands on must be writable: UTF-8 storage, JSON with
``ensure_ascii=False``, ``click.echo``. A lone UTF-16 surrogate is not."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

from parsers import ParsedMail, as_json


def strings(value: object, path: str = "mail") -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from strings(getattr(value, field.name), f"{path}.{field.name}")
    elif isinstance(value, tuple | list):
        for index, item in enumerate(value):
            yield from strings(item, f"{path}[{index}]")


def assert_writable(parsed: ParsedMail) -> None:
    for path, text in strings(parsed):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise AssertionError(f"{path} is not valid Unicode: {text[:80]!r}") from exc
        # PostgreSQL text cannot hold NUL: a mail carrying one must still be storable.
        assert "\x00" not in text, f"{path} contains NUL: {text[:80]!r}"
    json.dumps(as_json(parsed), ensure_ascii=False).encode("utf-8")
