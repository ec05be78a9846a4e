"""``intake parse FILE.eml``: how the daemon reads one mail, and why."""

from __future__ import annotations

from pathlib import Path

import click

from intake import clikit
from intake.parsing import parse_options
from parsers import report
from parsers.request import parse_mail


@click.command("parse")
@clikit.config_option
@click.argument("path", type=click.Path(path_type=Path))
@clikit.json_option
def parse(path: Path, as_json: bool) -> None:
    """Print everything extracted from FILE.eml: text, screenshots, versions, kind."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise click.ClickException(f"{path}: {error.strerror or error}") from None
    parsed = parse_mail(raw, options=parse_options(clikit.settings()))
    if as_json:
        clikit.print_json(report.as_json(parsed))
    else:
        click.echo(report.render_text(parsed))
