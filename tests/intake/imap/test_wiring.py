from __future__ import annotations

from pathlib import Path

import pytest

from intake.app import open_app
from intake.config import load_settings
from intake.sources.imap import ImapSource


def test_each_enabled_imap_mailbox_runs_as_a_service_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAP_PASSWORD", "secret")
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[daemon]
state_dir = "{tmp_path}"

[[imap]]
name = "support"
host = "imap.example.com"
username = "support@example.com"
password_env = "IMAP_PASSWORD"

[[imap]]
name = "archive"
enabled = false
host = "imap.example.com"
username = "archive@example.com"
password_env = "IMAP_PASSWORD"
"""
    )
    app = open_app(load_settings(config))
    try:
        sources = [s for s in app.services() if isinstance(s, ImapSource)]
    finally:
        app.close()
    assert [source.name for source in sources] == ["imap-support"]
