"""Shared pieces of the ``intake`` command's subcommands (options, output, the app)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from intake.app import App, open_app
from intake.config import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])


def _remember_config(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.find_root().ensure_object(dict)["config"] = value


def config_option(command: F) -> F:
    """``--config PATH`` accepted before or after any subcommand."""
    return click.option(
        "--config",
        "-c",
        type=click.Path(path_type=Path, dir_okay=False),
        expose_value=False,
        is_eager=True,
        callback=_remember_config,
        help="Configuration file (default: $INTAKE_CONFIG, else ./config.toml, else built-in).",
    )(command)


def json_option(command: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(command)


def settings(*, verify_secrets: bool = False) -> Settings:
    """The configuration; secrets are checked up front only where asked (run, check-config),
    elsewhere when a command actually uses one."""
    ctx = click.get_current_context()
    obj = ctx.find_root().ensure_object(dict)
    if "settings" not in obj:
        obj["settings"] = load_settings(obj.get("config"), verify_secrets=verify_secrets)
    settings: Settings = obj["settings"]
    return settings


@contextmanager
def app() -> Iterator[App]:
    opened = open_app(settings())
    try:
        yield opened
    finally:
        opened.close()


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2))


def table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> None:
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
