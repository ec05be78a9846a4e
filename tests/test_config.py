"""Configuration: which file is read, what is refused and how, and where secrets come from."""

from __future__ import annotations

import re
import sys
import textwrap
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pydantic
import pytest
from pydantic import BaseModel

from intake import mailflow
from intake.config import (
    CommandSecret,
    ConfigError,
    CredentialSecret,
    EnvSecret,
    SecretError,
    Settings,
    load_settings,
    locate_config,
    read_secret,
)
from intake.desk import Desk, DeskRules

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"


def write(directory: Path, text: str, name: str = "config.toml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, environ: Mapping[str, str] | None = None) -> Settings:
    return load_settings(write(tmp_path, text), environ=environ or {}, cwd=tmp_path)


def errors_of(tmp_path: Path, text: str, environ: Mapping[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, environ)
    return caught.value.errors


def credentials(directory: Path, **files: str) -> dict[str, str]:
    """An environment whose $CREDENTIALS_DIRECTORY holds `files` (`_` in names become `-`)."""
    directory.mkdir()
    for name, value in files.items():
        (directory / name.replace("_", "-")).write_text(value, encoding="utf-8")
    return {"CREDENTIALS_DIRECTORY": str(directory)}


MAILBOX = """
    [[imap]]
    name = "support"
    host = "imap.example.com"
    username = "support@example.com"
"""


# --- which file -------------------------------------------------------------------------


def test_without_a_file_the_built_in_defaults_apply(tmp_path: Path) -> None:
    settings = load_settings(environ={}, cwd=tmp_path)

    assert locate_config(environ={}, cwd=tmp_path) is None
    assert settings.daemon.state_dir == tmp_path / "var"
    assert settings.daemon.log_level == "INFO"
    assert settings.storage.url == f"sqlite:///{tmp_path}/var/intake.sqlite3"
    assert settings.outbound.folder == tmp_path / "var" / "outbound"
    assert settings.outbound.message_id_domain == "localhost"
    assert settings.desk.number_format == "OV-{year}-{seq:06d}"
    assert settings.desk.timezone == "Europe/Moscow"
    assert sorted(settings.packages) == ["basic", "premium", "standard"]
    assert settings.packages["standard"].response_hours == {
        "P1": 1.0,
        "P2": 4.0,
        "P3": 8.0,
        "P4": 24.0,
    }
    assert settings.packages["premium"].priority_shift == 1
    assert settings.imap == ()
    assert settings.telephony.enabled() == {}
    assert settings.telephony.default_region == "RU"


def test_intake_config_variable_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[desk]\nlanguage = "en"\n', name="intake.toml")

    settings = load_settings(environ={"INTAKE_CONFIG": str(path)}, cwd=tmp_path)

    assert settings.desk.language == "en"


def test_config_toml_in_the_working_directory_is_read(tmp_path: Path) -> None:
    write(tmp_path, '[desk]\nlanguage = "en"\n')

    assert load_settings(environ={}, cwd=tmp_path).desk.language == "en"


def test_explicit_path_wins_over_intake_config_and_working_directory(tmp_path: Path) -> None:
    write(tmp_path, '[desk]\nlanguage = "ru"\n')
    named = write(tmp_path, '[desk]\nlanguage = "ru"\n', name="named.toml")
    explicit = write(tmp_path, '[desk]\nlanguage = "en"\n', name="explicit.toml")

    settings = load_settings(explicit, environ={"INTAKE_CONFIG": str(named)}, cwd=tmp_path)

    assert settings.desk.language == "en"


def test_intake_config_wins_over_working_directory(tmp_path: Path) -> None:
    write(tmp_path, '[desk]\nlanguage = "ru"\n')
    named = write(tmp_path, '[desk]\nlanguage = "en"\n', name="named.toml")

    settings = load_settings(environ={"INTAKE_CONFIG": str(named)}, cwd=tmp_path)

    assert settings.desk.language == "en"


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "etc" / "config.toml"

    with pytest.raises(ConfigError) as caught:
        load_settings(missing, environ={}, cwd=tmp_path)

    assert caught.value.errors == [f"{missing}: no such file"]


def test_missing_file_named_by_intake_config_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "")
    environ = {"INTAKE_CONFIG": "/nonexistent/intake.toml"}

    with pytest.raises(ConfigError) as caught:
        load_settings(environ=environ, cwd=tmp_path)

    assert caught.value.errors == [
        "/nonexistent/intake.toml: no such file (named by $INTAKE_CONFIG)"
    ]


def test_bad_toml_is_reported_with_line_and_column(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, "[daemon]\nlog_level = 'INFO'\nstate_dir /var\n")

    assert len(errors) == 1
    assert errors[0].startswith(f"{tmp_path / 'config.toml'}: invalid TOML: Expected '='")
    assert "line 3, column 11" in errors[0]


def test_file_that_is_not_utf8_is_reported(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_bytes(b"[desk]\nlanguage = '\xff'\n")

    with pytest.raises(ConfigError) as caught:
        load_settings(environ={}, cwd=tmp_path)

    assert caught.value.errors == [
        f"{tmp_path / 'config.toml'}: invalid TOML: not UTF-8 at byte 19"
    ]


# --- what is refused --------------------------------------------------------------------


def test_wrong_type_is_reported_at_its_key_path(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, MAILBOX + 'port = "imaps"\npassword_env = "P"\n', {"P": "x"})

    assert errors == [
        "imap[0].port: Input should be a valid integer, unable to parse string as an integer"
    ]


def test_a_providers_settle_time_out_of_range_is_reported_at_its_key(tmp_path: Path) -> None:
    table = '[telephony.twilio]\nenabled = true\nauth_token_env = "T"\nsettle_seconds = '

    assert errors_of(tmp_path, table + "-1\n", {"T": "x"}) == [
        "telephony.twilio.settle_seconds: Input should be greater than or equal to 0"
    ]
    assert errors_of(tmp_path, table + "7200\n", {"T": "x"}) == [
        "telephony.twilio.settle_seconds: Input should be less than or equal to 3600"
    ]


def test_table_where_an_array_belongs_and_back_is_reported(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, "daemon = [1]\nimap = { name = 'x' }\n")

    assert errors == ["daemon: must be a table", "imap: must be an array"]


def test_unknown_keys_are_reported_at_top_level_and_nested(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """
        colour = "blue"
        [desk]
        colour = "red"
        [outbound.smtp]
        colour = "green"
    """,
    )

    assert sorted(errors) == [
        "colour: unknown key",
        "desk.colour: unknown key",
        "outbound.smtp.colour: unknown key",
    ]


def test_several_errors_are_reported_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(
            tmp_path,
            """
            [daemon]
            log_level = "LOUD"
            [storage]
            url = "mysq://db/intake"
            [desk]
            timezone = "Mars/Olympus_Mons"
            [http]
            port = 70000
        """,
        )

    assert [line.partition(":")[0] for line in caught.value.errors] == [
        "daemon.log_level",
        "storage.url",
        "desk.timezone",
        "http.port",
    ]
    assert str(caught.value) == "\n".join(caught.value.errors)


def test_unsupported_database_scheme_is_named(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, '[storage]\nurl = "mysq://intake@db/intake"\n')

    assert errors == ["storage.url: unsupported scheme 'mysq'"]


def test_postgresql_url_is_given_to_sqlalchemy_with_the_psycopg_driver(tmp_path: Path) -> None:
    settings = load(tmp_path, '[storage]\nurl = "postgresql://intake@db.example.com/intake"\n')

    assert settings.storage.sqlalchemy_url == "postgresql+psycopg://intake@db.example.com/intake"


def test_relative_sqlite_path_is_taken_from_the_working_directory(tmp_path: Path) -> None:
    settings = load(tmp_path, '[storage]\nurl = "sqlite:///data/intake.db?timeout=5"\n')

    assert settings.storage.sqlalchemy_url == f"sqlite:///{tmp_path}/data/intake.db?timeout=5"


def test_database_password_in_url_is_refused(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, '[storage]\nurl = "postgresql://intake:hunter2@db/intake"\n')

    assert errors == [
        "storage.url: must not contain a password: name it with password_env or password_credential"
    ]


@pytest.mark.parametrize(
    ("number_format", "reason"),
    [
        ("OV-{year}", "must contain {seq}"),
        ("OV-{seq}-{month}", "unknown field {month}; only {year} and {seq} exist"),
        ("OV-{seq.real}", "unknown field {seq.real}; only {year} and {seq} exist"),
        ("OV-{seq:q}", "{seq:q}: only a width such as {seq:06d} is allowed"),
        ("OV-{seq:,}", "{seq:,}: only a width such as {seq:06d} is allowed"),
        ("{year:02}-{seq}", "{year} takes no format"),
        ("OV-{seq", "invalid format: expected '}' before end of string"),
        ("OV {seq}", "renders as 'OV 123': no spaces or brackets allowed"),
    ],
)
def test_bad_number_format_is_refused(tmp_path: Path, number_format: str, reason: str) -> None:
    errors = errors_of(tmp_path, f"[desk]\nnumber_format = '{number_format}'\n")

    assert errors == [f"desk.number_format: {reason}"]


def test_unknown_timezone_is_refused(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, '[desk]\ntimezone = "Europe/Atlantis"\n')

    assert errors == ["desk.timezone: unknown time zone 'Europe/Atlantis'"]


def test_country_without_holiday_calendar_is_refused(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, '[desk]\ncountry = "XX"\n')

    assert errors == ["desk.country: no holiday calendar for country 'XX'"]


def test_day_both_holiday_and_working_day_is_refused(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """
        [desk]
        extra_holidays = [2026-12-31]
        extra_working_days = [2026-12-31]
    """,
    )

    assert errors == ["desk.extra_working_days: 2026-12-31 is also in extra_holidays"]


def test_packages_in_the_file_replace_the_built_in_ones(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        """
        [desk]
        default_package = "gold"
        [packages.gold]
        priority_shift = 2
        response_hours = { P4 = 12, P3 = 6, P2 = 2, P1 = 0.25 }
        resolution_hours = { P1 = 2, P2 = 8, P3 = 24, P4 = 48 }
    """,
    )

    assert list(settings.packages) == ["gold"]
    assert list(settings.packages["gold"].response_hours.items()) == [
        ("P1", 0.25),
        ("P2", 2.0),
        ("P3", 6.0),
        ("P4", 12.0),
    ]


def test_default_package_must_be_defined(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """
        [packages.gold]
        response_hours = { P1 = 1, P2 = 2, P3 = 3, P4 = 4 }
        resolution_hours = { P1 = 1, P2 = 2, P3 = 3, P4 = 4 }
    """,
    )

    assert errors == ["desk.default_package: no package 'standard' (defined: gold)"]


def test_package_needs_hours_for_every_priority_and_a_valid_name(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """
        [packages."Gold Plan"]
        priority_shift = 4
        response_hours = { P1 = 1, P2 = 2, P3 = 0 }
        resolution_hours = { P1 = 1, P2 = 2, P3 = 3, P4 = 4, P5 = 5 }
    """,
    )

    assert errors == [
        "packages.\"Gold Plan\": invalid name 'Gold Plan': use lowercase letters, digits, '-'"
        " and '_', starting with a letter",
        'packages."Gold Plan".priority_shift: Input should be less than or equal to 3',
        'packages."Gold Plan".response_hours.P3: Input should be greater than 0',
        "packages.\"Gold Plan\".resolution_hours.P5: Input should be 'P1', 'P2', 'P3' or 'P4'",
    ]


def test_package_missing_a_priority_is_refused(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """
        [packages.standard]
        response_hours = { P1 = 1, P2 = 2, P3 = 3 }
        resolution_hours = { P1 = 1, P2 = 2, P3 = 3, P4 = 4 }
    """,
    )

    assert errors == ["packages.standard.response_hours: missing P4"]


def test_relative_paths_become_absolute_against_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "cert.pem").touch()
    (tmp_path / "tls" / "key.pem").touch()

    settings = load(
        tmp_path,
        """
        [daemon]
        state_dir = "data"
        [smtp]
        tls_cert = "tls/cert.pem"
        tls_key = "tls/key.pem"
    """,
    )

    assert settings.daemon.state_dir == tmp_path / "data"
    assert settings.storage.url == f"sqlite:///{tmp_path}/data/intake.sqlite3"
    assert settings.outbound.folder == tmp_path / "data" / "outbound"
    assert settings.smtp.tls_cert == tmp_path / "tls" / "cert.pem"
    assert settings.smtp.tls_key == tmp_path / "tls" / "key.pem"


def test_tls_certificate_without_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").touch()

    errors = errors_of(tmp_path, '[smtp]\ntls_cert = "cert.pem"\n')

    assert errors == ["smtp.tls_key: needed with tls_cert"]


def test_missing_tls_certificate_file_is_refused(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, '[smtp]\ntls_cert = "cert.pem"\ntls_key = "key.pem"\n')

    assert errors == [
        f"smtp.tls_cert: no such file {tmp_path}/cert.pem",
        f"smtp.tls_key: no such file {tmp_path}/key.pem",
    ]


def test_accepted_recipients_are_addresses_or_domains(tmp_path: Path) -> None:
    settings = load(tmp_path, '[smtp]\naccept = ["Support@Example.COM", "@Example.com"]\n')

    assert settings.smtp.accept == ("support@example.com", "@example.com")
    assert errors_of(tmp_path, '[smtp]\naccept = ["support", "@"]\n') == [
        "smtp.accept[0]: invalid email address 'support'",
        "smtp.accept[1]: invalid domain ''",
    ]


def test_listener_port_zero_means_any_free_port_but_client_port_must_be_real(
    tmp_path: Path,
) -> None:
    assert load(tmp_path, "[http]\nport = 0\n").http.port == 0
    assert errors_of(tmp_path, "[outbound.smtp]\nport = 0\n") == [
        "outbound.smtp.port: Input should be greater than or equal to 1"
    ]


def test_empty_host_is_refused(tmp_path: Path) -> None:
    assert errors_of(tmp_path, '[smtp]\nhost = " "\n') == ["smtp.host: must not be empty"]


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    assert load(tmp_path, '[daemon]\nlog_level = "debug"\n').daemon.log_level == "DEBUG"


def test_message_id_domain_defaults_to_the_sender_domain(tmp_path: Path) -> None:
    settings = load(tmp_path, '[outbound]\nfrom_address = "help@Support.Example.com"\n')

    assert settings.outbound.message_id_domain == "support.example.com"


def test_the_receiving_servers_authserv_id_reaches_the_registrar(tmp_path: Path) -> None:
    settings = load(tmp_path, '[pipeline]\nauthserv_id = "mx.support.example"\n')
    registrar = mailflow.registrar(settings, Desk(DeskRules(packages={})))
    assert registrar.identity.authserv_id == "mx.support.example"
    assert load(tmp_path, "").pipeline.authserv_id == ""


def test_duplicate_mailbox_names_are_refused(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, (MAILBOX + 'password_env = "P"\n') * 2, {"P": "x"})

    assert errors == ["imap[1].name: duplicate mailbox name 'support' (also imap[0])"]


def test_telephony_provider_is_disabled_unless_enabled(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        """
        [telephony.asterisk]
        ari_url = "http://pbx:8088/ari"
        [telephony.other]
        enabled = true
    """,
    )

    assert settings.telephony.providers["asterisk"] == {
        "enabled": False,
        "ari_url": "http://pbx:8088/ari",
    }
    assert settings.telephony.providers["generic"].enabled is False  # type: ignore[union-attr]
    assert settings.telephony.enabled() == {"other": {"enabled": True}}
    assert errors_of(tmp_path, '[telephony.Mango]\nenabled = "yes"\n') == [
        "telephony.Mango: invalid name 'Mango': use lowercase letters, digits, '-' and '_',"
        " starting with a letter",
        "telephony.Mango.enabled: must be true or false",
    ]


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load_settings(environ={}, cwd=tmp_path)

    with pytest.raises(pydantic.ValidationError):
        settings.desk.language = "en"


# --- secrets ----------------------------------------------------------------------------


def test_missing_environment_variable_is_named(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, MAILBOX + 'password_env = "IMAP_PASSWORD"\n')

    assert errors == ["imap[0].password_env: environment variable IMAP_PASSWORD is not set"]


def test_empty_environment_variable_is_refused(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path, MAILBOX + 'password_env = "IMAP_PASSWORD"\n', {"IMAP_PASSWORD": ""}
    )

    assert errors == ["imap[0].password_env: environment variable IMAP_PASSWORD is empty"]


SMTP_WITH_CREDENTIAL = """
    [outbound.smtp]
    username = "support@example.com"
    auth = "password"
    password_credential = "smtp-password"
"""


def test_credential_without_credentials_directory_is_refused(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, SMTP_WITH_CREDENTIAL)

    assert errors == ["outbound.smtp.password_credential: $CREDENTIALS_DIRECTORY is not set"]


def test_credential_missing_from_credentials_directory_is_refused(tmp_path: Path) -> None:
    environ = credentials(tmp_path / "credentials", other="x")

    errors = errors_of(tmp_path, SMTP_WITH_CREDENTIAL, environ)

    assert errors == [
        "outbound.smtp.password_credential: credential 'smtp-password' not found in"
        " $CREDENTIALS_DIRECTORY"
    ]


def test_credential_is_read_at_use_without_its_trailing_newline(tmp_path: Path) -> None:
    environ = credentials(tmp_path / "credentials", smtp_password="s3cret\n")

    settings = load(tmp_path, SMTP_WITH_CREDENTIAL, environ)

    assert settings.outbound.smtp.password == CredentialSecret("smtp-password")
    assert read_secret(CredentialSecret("smtp-password"), environ) == "s3cret"


def test_credential_holding_only_a_newline_is_refused(tmp_path: Path) -> None:
    environ = credentials(tmp_path / "credentials", smtp_password="\n")

    errors = errors_of(tmp_path, SMTP_WITH_CREDENTIAL, environ)

    assert errors == ["outbound.smtp.password_credential: credential 'smtp-password' is empty"]


def test_environment_secret_is_read_at_use(tmp_path: Path) -> None:
    settings = load(
        tmp_path, MAILBOX + 'password_env = "IMAP_PASSWORD"\n', {"IMAP_PASSWORD": "at-load"}
    )

    assert settings.imap[0].password == EnvSecret("IMAP_PASSWORD")
    assert settings.imap[0].password.read({"IMAP_PASSWORD": "rotated"}) == "rotated"
    with pytest.raises(SecretError, match="environment variable IMAP_PASSWORD is not set"):
        settings.imap[0].password.read({})


def test_two_sources_for_one_secret_are_refused(tmp_path: Path) -> None:
    environ = {"IMAP_PASSWORD": "x"} | credentials(tmp_path / "c", imap_password="x")

    errors = errors_of(
        tmp_path,
        MAILBOX + 'password_env = "IMAP_PASSWORD"\npassword_credential = "imap-password"\n',
        environ,
    )

    assert errors == [
        "imap[0].password_credential: conflicts with password_env; set only one of them"
    ]


def test_auth_without_its_secret_is_refused(tmp_path: Path) -> None:
    assert errors_of(tmp_path, MAILBOX) == [
        "imap[0].auth: 'password' needs password_env or password_credential"
    ]
    assert errors_of(tmp_path, MAILBOX + 'auth = "xoauth2"\n') == [
        "imap[0].auth: 'xoauth2' needs token_env or token_credential or token_command"
    ]


def test_secret_unused_by_auth_is_refused(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path, MAILBOX + 'password_env = "P"\ntoken_env = "T"\n', {"P": "x", "T": "y"}
    )

    assert errors == ["imap[0].token_env: not used with auth = 'password'"]


def test_outbound_smtp_auth_needs_a_username(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path, '[outbound.smtp]\nauth = "password"\npassword_env = "P"\n', {"P": "x"}
    )

    assert errors == ["outbound.smtp.username: needed with auth = 'password'"]


def test_token_command_runs_at_use_not_at_load(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    script = f"open({str(ran)!r}, 'w').close(); print('tok-123')"
    settings = load(
        tmp_path,
        MAILBOX
        + f"""
        auth = "xoauth2"
        token_command = [{sys.executable!r}, "-c", {script!r}]
    """,
    )

    assert not ran.exists()
    assert settings.imap[0].token is not None
    assert settings.imap[0].token.read() == "tok-123"
    assert ran.exists()


def test_failing_token_command_raises_secret_error(tmp_path: Path) -> None:
    failing = CommandSecret((sys.executable, "-c", "import sys; sys.exit('no refresh token')"))

    with pytest.raises(SecretError, match="exited with status 1: no refresh token"):
        failing.read()
    with pytest.raises(SecretError, match="cannot run /nonexistent/helper"):
        CommandSecret(("/nonexistent/helper",)).read()


def test_telegram_enabled_without_token_is_refused(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, "[telegram]\nenabled = true\nchat_ids = [1]\n")

    assert errors == ["telegram.enabled: needs token_env or token_credential"]


def test_secret_values_never_appear_in_the_settings(tmp_path: Path) -> None:
    environ = {"IMAP_PASSWORD": "hunter2-env", "TELEGRAM_TOKEN": "hunter3-env"} | credentials(
        tmp_path / "credentials", smtp_password="hunter4-credential\n"
    )
    settings = load(
        tmp_path,
        MAILBOX
        + 'password_env = "IMAP_PASSWORD"\n'
        + SMTP_WITH_CREDENTIAL
        + '[telegram]\nenabled = true\ntoken_env = "TELEGRAM_TOKEN"\nchat_ids = [1]\n',
        environ,
    )

    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert "hunter" not in shown
    assert "IMAP_PASSWORD" in repr(settings)


# --- config.example.toml ----------------------------------------------------------------


def test_example_documents_the_built_in_defaults(tmp_path: Path) -> None:
    from_example = load_settings(EXAMPLE, environ={}, cwd=tmp_path)

    assert from_example == load_settings(environ={}, cwd=tmp_path)


def enable_disabled_tables(text: str) -> str:
    """Uncomments the `#[table]` examples (not the `# key` alternatives inside them)."""
    lines, disabled_table = [], False
    for line in text.splitlines():
        if line.startswith("["):
            disabled_table = False
        elif line.startswith("#["):
            disabled_table = True
        lines.append(line[1:] if disabled_table and re.match(r"#[^\s#]", line) else line)
    return "\n".join(lines)


def test_example_loads_with_its_disabled_tables_enabled(tmp_path: Path) -> None:
    environ = credentials(
        tmp_path / "credentials",
        imap_support_password="pw\n",
        operator_anna_token="t",
        cti_token="t",
        cti_signature_secret="s",
        twilio_auth_token="t",
        zadarma_api_secret="s",
        mango_api_key="k",
        mango_api_salt="s",
    )
    path = write(tmp_path, enable_disabled_tables(EXAMPLE.read_text(encoding="utf-8")))

    settings = load_settings(path, environ=environ, cwd=tmp_path)

    assert [mailbox.name for mailbox in settings.imap] == ["support", "helpdesk"]
    assert settings.imap[0].password is not None
    assert settings.imap[0].password.read(environ) == "pw"
    assert isinstance(settings.imap[1].token, CommandSecret)
    assert sorted(settings.telephony.enabled()) == [
        "generic",
        "mango",
        "telnyx",
        "twilio",
        "zadarma",
    ]
    assert [operator.name for operator in settings.http.operators] == ["anna"]


def documented_keys(text: str) -> set[str]:
    """Dotted keys of every setting in the text: active, `#disabled` or `# alternative`."""
    keys: set[str] = set()
    table = ""
    for line in text.splitlines():
        if header := re.fullmatch(r"#?\[\[?([\w.-]+)\]\]?", line):
            table = header[1]
        elif setting := re.fullmatch(r"#? ?([A-Za-z_]\w*\s*=.*)", line):
            keys |= {f"{table}.{key}" for key in flat_keys(tomllib.loads(setting[1]))}
    return keys


def flat_keys(table: Mapping[str, Any]) -> Iterator[str]:
    for key, value in table.items():
        if isinstance(value, dict):
            yield from (f"{key}.{inner}" for inner in flat_keys(value))
        else:
            yield key


def model_keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Patterns of the keys a model reads: `packages.*.priority_shift`, `imap.name`."""
    for name, field in model.model_fields.items():
        yield from annotation_keys(field.annotation, f"{prefix}{name}")


def annotation_keys(annotation: Any, key: str) -> Iterator[str]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        yield from annotation_keys(args[0], key)
    elif origin in (typing.Union, types.UnionType):
        (present,) = (arg for arg in args if arg is not type(None))
        yield from annotation_keys(present, key)
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield from model_keys(annotation, f"{key}.")
    elif origin is tuple and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        yield from model_keys(args[0], f"{key}.")  # an array of tables, [[key]]
    elif origin is dict:
        yield from annotation_keys(args[1], f"{key}.*")
    else:
        yield key


def test_example_documents_every_key_and_only_real_keys() -> None:
    documented = documented_keys(EXAMPLE.read_text(encoding="utf-8"))
    patterns = set(model_keys(Settings))

    undocumented = {p for p in patterns if not any(fnmatch(k, p) for k in documented)}
    unknown = {k for k in documented if not any(fnmatch(k, p) for p in patterns)}

    assert (undocumented, unknown) == (set(), set())
    assert "telephony.generic.enabled" in documented
