"""Settings: one TOML file validated into frozen models; secrets are named there, never written.

A secret is named by one key of a pair (or triple): `<x>_env`, an environment variable;
`<x>_credential`, a systemd credential, i.e. the file `$CREDENTIALS_DIRECTORY/<name>`; and
for OAuth2 tokens `<x>_command`, a command printing the token. Loading checks that every
named variable and credential exists; the value itself is read by `SecretRef.read` when it
is used, so it is never held by the settings.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import string
import subprocess
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_args
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays
import phonenumbers
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

CONFIG_ENV = "INTAKE_CONFIG"
CONFIG_FILE_NAME = "config.toml"
_DEFAULT_STATE_DIR = "var"
_COMMAND_TIMEOUT = 30.0


class ConfigError(Exception):
    """The configuration cannot be used; `errors` has one `key.path: reason` line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class SecretError(Exception):
    """A secret named by the configuration cannot be read."""


class _InvalidKey(ValueError):
    """Raised by a validator that checks several keys, to point at the key that is wrong."""

    def __init__(self, loc: tuple[str | int, ...], reason: str) -> None:
        super().__init__(reason)
        self.loc = loc


# --- secrets ------------------------------------------------------------------------------


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


@dataclass(frozen=True)
class EnvSecret:
    """A secret in an environment variable."""

    variable: str

    def read(self, environ: Mapping[str, str] | None = None) -> str:
        value = _environ(environ).get(self.variable)
        if value is None:
            raise SecretError(f"environment variable {self.variable} is not set")
        if not value:
            raise SecretError(f"environment variable {self.variable} is empty")
        return value


@dataclass(frozen=True)
class CredentialSecret:
    """A systemd credential (LoadCredential=, LoadCredentialEncrypted=, SetCredential=)."""

    name: str

    def read(self, environ: Mapping[str, str] | None = None) -> str:
        directory = _environ(environ).get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise SecretError("$CREDENTIALS_DIRECTORY is not set")
        try:
            value = (Path(directory) / self.name).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SecretError(
                f"credential '{self.name}' not found in $CREDENTIALS_DIRECTORY"
            ) from None
        except UnicodeDecodeError:
            raise SecretError(f"credential '{self.name}' is not UTF-8 text") from None
        except OSError as error:
            raise SecretError(f"cannot read credential '{self.name}': {error.strerror}") from None
        # Credential files written with `echo` or an editor end with a newline.
        value = value.rstrip("\r\n")
        if not value:
            raise SecretError(f"credential '{self.name}' is empty")
        return value


@dataclass(frozen=True)
class CommandSecret:
    """A command that prints a short-lived token (an OAuth2 helper); run at each use."""

    argv: tuple[str, ...]

    def read(self, environ: Mapping[str, str] | None = None) -> str:
        """Runs the command. It blocks: asynchronous callers run it in a thread."""
        program = self.argv[0]
        try:
            result = subprocess.run(
                self.argv,
                capture_output=True,
                encoding="utf-8",
                errors="replace",
                timeout=_COMMAND_TIMEOUT,
                env=None if environ is None else dict(environ),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SecretError(f"{program} did not finish in {_COMMAND_TIMEOUT:g} s") from None
        except OSError as error:
            raise SecretError(f"cannot run {program}: {error.strerror}") from None
        if result.returncode != 0:
            last_line = result.stderr.strip().rpartition("\n")[2]
            detail = f": {last_line}" if last_line else ""
            raise SecretError(f"{program} exited with status {result.returncode}{detail}")
        token = result.stdout.strip()
        if not token:
            raise SecretError(f"{program} printed no token")
        return token


SecretRef = EnvSecret | CredentialSecret | CommandSecret


def read_secret(ref: SecretRef, environ: Mapping[str, str] | None = None) -> str:
    """The secret's value, read now; raises SecretError."""
    return ref.read(environ)


def _secret_ref(
    env: str | None, credential: str | None, command: tuple[str, ...] | None = None
) -> SecretRef | None:
    if env is not None:
        return EnvSecret(env)
    if credential is not None:
        return CredentialSecret(credential)
    if command is not None:
        return CommandSecret(command)
    return None


# --- field types --------------------------------------------------------------------------


@dataclass(frozen=True)
class _LoadContext:
    environ: Mapping[str, str]
    cwd: Path
    # The daemon needs every secret at start; a staff member's shell has no systemd
    # credentials, and `intake tickets list` should not need the IMAP password.
    verify_secrets: bool = True


def _context(info: ValidationInfo) -> _LoadContext:
    """Models validated outside load_settings() see this process's environment and directory."""
    if isinstance(info.context, _LoadContext):
        return info.context
    return _LoadContext(os.environ, Path.cwd())


def _absolute(path: Path, info: ValidationInfo) -> Path:
    return path if path.is_absolute() else _context(info).cwd / path


def _is_file(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"no such file {path}")
    return path


def _not_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


_NAME = re.compile(r"[a-z][a-z0-9_-]*")


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid name '{name}': use lowercase letters, digits, '-' and '_',"
            " starting with a letter"
        )
    return name


_ENV_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _require_secret(secret: EnvSecret | CredentialSecret, info: ValidationInfo) -> None:
    if not _context(info).verify_secrets:
        return
    try:
        secret.read(_context(info).environ)
    except SecretError as error:
        raise ValueError(str(error)) from None


def _check_env_secret(variable: str, info: ValidationInfo) -> str:
    if not _ENV_VARIABLE.fullmatch(variable):
        raise ValueError(f"invalid environment variable name '{variable}'")
    _require_secret(EnvSecret(variable), info)
    return variable


def _check_credential_secret(name: str, info: ValidationInfo) -> str:
    if name in ("", ".", "..") or "/" in name:
        raise ValueError(f"invalid credential name '{name}'")
    _require_secret(CredentialSecret(name), info)
    return name


def _check_command(argv: tuple[str, ...]) -> tuple[str, ...]:
    if not argv or not argv[0]:
        raise ValueError("must list the program and its arguments")
    return argv


# Hostnames and mail domains; Unicode letters are allowed for internationalised domains.
_DOMAIN = re.compile(r"(?:[^\W_](?:[\w-]*[^\W_])?\.)*[^\W_](?:[\w-]*[^\W_])?")
_LOCAL_PART = re.compile(r"[^@\s\"(),:;<>\[\]\\]+")


def _check_domain(domain: str) -> str:
    if not _DOMAIN.fullmatch(domain):
        raise ValueError(f"invalid domain '{domain}'")
    return domain.lower()


def _check_email(address: str) -> str:
    local, at, domain = address.rpartition("@")
    if not (at and _LOCAL_PART.fullmatch(local) and _DOMAIN.fullmatch(domain)):
        raise ValueError(f"invalid email address '{address}'")
    return f"{local}@{domain.lower()}"


def _check_recipient(pattern: str) -> str:
    """An address (`support@example.com`) or every address of a domain (`@example.com`)."""
    if pattern.startswith("@"):
        return "@" + _check_domain(pattern[1:])
    return _check_email(pattern).lower()


def _check_http_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: '{url}'")
    return url.rstrip("/")


_DATABASE_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg")


def _check_database_url(url: str, info: ValidationInfo) -> str:
    scheme, separator, rest = url.partition("://")
    scheme = scheme.lower()
    if not separator:
        raise ValueError("not a database URL, e.g. postgresql://intake@db.example.com/intake")
    if scheme not in _DATABASE_SCHEMES:
        raise ValueError(f"unsupported scheme '{scheme}'")
    if scheme == "sqlite":
        return "sqlite://" + _absolute_sqlite_location(rest, info)
    if urlsplit(url).password is not None:
        raise ValueError(
            "must not contain a password: name it with password_env or password_credential"
        )
    return f"{scheme}://{rest}"


def _absolute_sqlite_location(rest: str, info: ValidationInfo) -> str:
    """What follows `sqlite://`, with a relative path made absolute: `/data/x.db` (SQLAlchemy's
    path starts after the third slash, so it is relative) becomes `//<cwd>/data/x.db`."""
    if not rest:
        return rest
    if not rest.startswith("/"):
        raise ValueError("a SQLite URL looks like sqlite:///path/to/intake.sqlite3")
    path, question, query = rest[1:].partition("?")
    if path in ("", ":memory:") or Path(path).is_absolute():
        return rest
    return f"/{_context(info).cwd / path}{question}{query}"


_NUMBER_FIELDS = ("year", "seq")


def _check_number_format(template: str) -> str:
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise ValueError(f"invalid format: {error}") from None
    unknown = [name for name in fields if name not in _NUMBER_FIELDS]
    if unknown:
        raise ValueError(f"unknown field {{{unknown[0]}}}; only {{year}} and {{seq}} exist")
    if "seq" not in fields:
        raise ValueError("must contain {seq}")
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name == "seq" and (conversion or not re.fullmatch(r"(?:0?\d+)?d?", spec or "")):
            raise ValueError(f"{{seq:{spec}}}: only a width such as {{seq:06d}} is allowed")
        if name == "year" and (conversion or spec):
            raise ValueError("{year} takes no format")
    try:
        sample = template.format(year=2026, seq=123)
    except (ValueError, KeyError, IndexError) as error:
        raise ValueError(f"cannot render a number: {error}") from None
    # Outbound subjects carry the number as a `[tag]`, and replies are matched on it.
    if any(char.isspace() or char in "[]" for char in sample):
        raise ValueError(f"renders as '{sample}': no spaces or brackets allowed")
    return template


def _check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone '{name}'") from None
    return name


def _check_country(code: str) -> str:
    code = code.upper()
    if code not in holidays.list_supported_countries():
        raise ValueError(f"no holiday calendar for country '{code}'")
    return code


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


PriorityName = Literal["P1", "P2", "P3", "P4"]
_PRIORITIES: tuple[PriorityName, ...] = get_args(PriorityName)


def _check_every_priority(hours: dict[PriorityName, float]) -> dict[PriorityName, float]:
    missing = [priority for priority in _PRIORITIES if priority not in hours]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    return {priority: hours[priority] for priority in _PRIORITIES}


def _with_enabled_flag(table: dict[str, Any]) -> dict[str, Any]:
    enabled = table.get("enabled", False)
    if not isinstance(enabled, bool):
        raise _InvalidKey(("enabled",), "must be true or false")
    return {**table, "enabled": enabled}


AbsolutePath = Annotated[Path, AfterValidator(_absolute)]
ExistingFile = Annotated[Path, AfterValidator(_absolute), AfterValidator(_is_file)]
Text = Annotated[str, AfterValidator(_not_empty)]
Name = Annotated[str, AfterValidator(_check_name)]
Port = Annotated[int, Field(ge=1, le=65535)]
# Listeners also take 0: any free port, which tests use.
ListenPort = Annotated[int, Field(ge=0, le=65535)]
EnvVariable = Annotated[str, AfterValidator(_check_env_secret)]
CredentialName = Annotated[str, AfterValidator(_check_credential_secret)]
Command = Annotated[tuple[str, ...], AfterValidator(_check_command)]
Email = Annotated[str, AfterValidator(_check_email)]
Recipient = Annotated[str, AfterValidator(_check_recipient)]
DatabaseUrl = Annotated[str, AfterValidator(_check_database_url)]
HoursByPriority = Annotated[
    dict[PriorityName, PositiveFloat], AfterValidator(_check_every_priority)
]
ProviderTable = Annotated[dict[str, Any], AfterValidator(_with_enabled_flag)]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


# --- secret key rules ---------------------------------------------------------------------

_SOURCE_SUFFIXES = ("_env", "_credential", "_command")


def _source_keys(model: BaseModel, secret: str) -> list[str]:
    keys = (secret + suffix for suffix in _SOURCE_SUFFIXES)
    return [key for key in keys if key in type(model).model_fields]


def _configured_source(model: BaseModel, secret: str) -> str | None:
    """The one key naming `secret`, if any."""
    chosen = [key for key in _source_keys(model, secret) if getattr(model, key) is not None]
    if len(chosen) > 1:
        raise _InvalidKey((chosen[1],), f"conflicts with {chosen[0]}; set only one of them")
    return chosen[0] if chosen else None


def _check_auth_secrets(model: BaseModel, auth: str) -> None:
    """auth = 'password' needs a password and no token, 'xoauth2' the reverse, 'none' neither."""
    for secret, used_by in (("password", "password"), ("token", "xoauth2")):
        key = _configured_source(model, secret)
        if auth == used_by and key is None:
            options = " or ".join(_source_keys(model, secret))
            raise _InvalidKey(("auth",), f"'{auth}' needs {options}")
        if auth != used_by and key is not None:
            raise _InvalidKey((key,), f"not used with auth = '{auth}'")


# --- sections -----------------------------------------------------------------------------


class _Section(BaseModel):
    # Defaults are validated too, so that a default path is made absolute like a configured one.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _table() -> Any:
    """An absent section is validated as an empty table, in the context of the load."""
    return {}


class DaemonSettings(_Section):
    state_dir: AbsolutePath = Path(_DEFAULT_STATE_DIR)
    log_level: Annotated[LogLevel, BeforeValidator(_upper)] = "INFO"
    shutdown_timeout: PositiveFloat = 10.0


class StorageSettings(_Section):
    url: DatabaseUrl
    auto_upgrade: bool = True
    pool_size: PositiveInt = 5
    password_env: EnvVariable | None = None
    password_credential: CredentialName | None = None

    @model_validator(mode="after")
    def _check_password_source(self) -> Self:
        _configured_source(self, "password")
        return self

    @property
    def sqlalchemy_url(self) -> str:
        """The URL to give SQLAlchemy (psycopg 3 for PostgreSQL), without the password."""
        scheme, _, rest = self.url.partition("://")
        return f"postgresql+psycopg://{rest}" if scheme == "postgresql" else self.url

    @property
    def password(self) -> SecretRef | None:
        return _secret_ref(self.password_env, self.password_credential)


class DeskSettings(_Section):
    number_format: Annotated[str, AfterValidator(_check_number_format)] = "OV-{year}-{seq:06d}"
    timezone: Annotated[str, AfterValidator(_check_timezone)] = "Europe/Moscow"
    country: Annotated[str, AfterValidator(_check_country)] = "RU"
    language: Literal["ru", "en"] = "ru"
    default_queue: Text = "support"
    default_package: Name = "standard"
    auto_close_working_days: PositiveInt = 14
    extra_holidays: tuple[date, ...] = ()
    extra_working_days: tuple[date, ...] = ()

    @model_validator(mode="after")
    def _check_no_day_is_both(self) -> Self:
        both = sorted(set(self.extra_holidays) & set(self.extra_working_days))
        if both:
            raise _InvalidKey(
                ("extra_working_days",), f"{both[0].isoformat()} is also in extra_holidays"
            )
        return self


class PackageSettings(_Section):
    priority_shift: Annotated[int, Field(ge=-3, le=3)] = 0
    response_hours: HoursByPriority
    resolution_hours: HoursByPriority


def _hours(p1: float, p2: float, p3: float, p4: float) -> dict[str, float]:
    return dict(zip(_PRIORITIES, (p1, p2, p3, p4), strict=True))


def _default_packages() -> Any:
    return {
        "basic": {
            "priority_shift": -1,
            "response_hours": _hours(2, 8, 24, 72),
            "resolution_hours": _hours(24, 72, 240, 480),
        },
        "standard": {
            "priority_shift": 0,
            "response_hours": _hours(1, 4, 8, 24),
            "resolution_hours": _hours(8, 24, 72, 240),
        },
        "premium": {
            "priority_shift": 1,
            "response_hours": _hours(0.5, 2, 4, 8),
            "resolution_hours": _hours(4, 12, 48, 120),
        },
    }


class SmtpListenerSettings(_Section):
    enabled: bool = True
    host: Text = "127.0.0.1"
    port: ListenPort = 2525
    accept: tuple[Recipient, ...] = ()
    max_message_size: PositiveInt = 32 * 1024 * 1024
    lmtp: bool = False
    tls_cert: ExistingFile | None = None
    tls_key: ExistingFile | None = None

    @model_validator(mode="after")
    def _check_tls_pair(self) -> Self:
        if self.tls_cert is None and self.tls_key is not None:
            raise _InvalidKey(("tls_cert",), "needed with tls_key")
        if self.tls_key is None and self.tls_cert is not None:
            raise _InvalidKey(("tls_key",), "needed with tls_cert")
        return self


class PipelineSettings(_Section):
    workers: PositiveInt = 4
    max_attempts: PositiveInt = 5
    poll_interval: PositiveFloat = 5.0
    lease: PositiveFloat = 300.0
    unknown_sender: Literal["register", "reject"] = "register"
    unassigned_customer: Text = "unassigned"
    authserv_id: str = ""


class ImapMailbox(_Section):
    enabled: bool = True
    name: Name
    host: Text
    port: Port = 993
    security: Literal["tls", "starttls", "none"] = "tls"
    username: Text
    auth: Literal["password", "xoauth2"] = "password"
    password_env: EnvVariable | None = None
    password_credential: CredentialName | None = None
    token_env: EnvVariable | None = None
    token_credential: CredentialName | None = None
    token_command: Command | None = None
    folder: Text = "INBOX"
    processed_folder: str = ""
    idle: bool = True
    poll_interval: Annotated[float, Field(ge=1)] = 60.0

    @model_validator(mode="after")
    def _check_secrets_match_auth(self) -> Self:
        _check_auth_secrets(self, self.auth)
        return self

    @property
    def password(self) -> SecretRef | None:
        return _secret_ref(self.password_env, self.password_credential)

    @property
    def token(self) -> SecretRef | None:
        return _secret_ref(self.token_env, self.token_credential, self.token_command)


class OperatorSettings(_Section):
    """A phone operator allowed to log calls through the API with a bearer token."""

    name: Name
    token_env: EnvVariable | None = None
    token_credential: CredentialName | None = None

    @model_validator(mode="after")
    def _check_token_named(self) -> Self:
        if _configured_source(self, "token") is None:
            raise _InvalidKey(("name",), "needs token_env or token_credential")
        return self

    @property
    def token(self) -> SecretRef:
        ref = _secret_ref(self.token_env, self.token_credential)
        assert ref is not None  # checked by _check_token_named
        return ref


class HttpSettings(_Section):
    enabled: bool = True
    host: Text = "127.0.0.1"
    port: ListenPort = 8080
    max_body_size: PositiveInt = 1024 * 1024
    operators: tuple[OperatorSettings, ...] = ()

    @field_validator("operators")
    @classmethod
    def _check_unique_operator_names(
        cls, operators: tuple[OperatorSettings, ...]
    ) -> tuple[OperatorSettings, ...]:
        names = [operator.name for operator in operators]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise _InvalidKey((index, "name"), f"duplicate operator name '{name}'")
        return operators


class OutboundSmtpSettings(_Section):
    host: Text = "127.0.0.1"
    port: Port = 587
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: Text | None = None
    auth: Literal["password", "xoauth2", "none"] = "none"
    password_env: EnvVariable | None = None
    password_credential: CredentialName | None = None
    token_env: EnvVariable | None = None
    token_credential: CredentialName | None = None
    token_command: Command | None = None
    timeout: PositiveFloat = 30.0

    @model_validator(mode="after")
    def _check_secrets_match_auth(self) -> Self:
        _check_auth_secrets(self, self.auth)
        if self.auth != "none" and self.username is None:
            raise _InvalidKey(("username",), f"needed with auth = '{self.auth}'")
        return self

    @property
    def password(self) -> SecretRef | None:
        return _secret_ref(self.password_env, self.password_credential)

    @property
    def token(self) -> SecretRef | None:
        return _secret_ref(self.token_env, self.token_credential, self.token_command)


def _is_directory(path: Path) -> Path:
    if not path.is_dir():
        raise ValueError(f"no such directory {path}")
    return path


ExistingDirectory = Annotated[Path, AfterValidator(_absolute), AfterValidator(_is_directory)]


class OutboundSettings(_Section):
    transport: Literal["folder", "smtp"] = "folder"
    folder: AbsolutePath
    from_address: Email = "support@localhost"
    message_id_domain: str = ""
    smtp: OutboundSmtpSettings = Field(default_factory=_table)
    templates_dir: ExistingDirectory | None = None
    rate_limit_per_hour: PositiveInt = 10
    max_attempts: PositiveInt = 8
    workers: PositiveInt = 1

    @field_validator("message_id_domain")
    @classmethod
    def _sender_domain_by_default(cls, domain: str, info: ValidationInfo) -> str:
        if domain:
            return _check_domain(domain)
        sender = info.data.get("from_address")
        return sender.rpartition("@")[2] if isinstance(sender, str) else domain


def _check_pattern(source: str) -> str:
    try:
        re.compile(source)
    except re.error as error:
        raise ValueError(f"invalid regular expression {source!r}: {error}") from None
    return source


Pattern = Annotated[str, AfterValidator(_check_pattern)]
KindName = Literal["incident", "problem", "service_request", "development_request"]


class ParsingSettings(_Section):
    max_screenshot_bytes: PositiveInt = 10 * 1024 * 1024
    max_screenshots: Annotated[int, Field(ge=0)] = 20


class ClassifySettings(_Section):
    """Keyword rules for kind and priority; a list given here replaces the built-in one."""

    problem: tuple[Pattern, ...] | None = None
    incident: tuple[Pattern, ...] | None = None
    service_request: tuple[Pattern, ...] | None = None
    development_request: tuple[Pattern, ...] | None = None
    urgent: tuple[Pattern, ...] | None = None
    critical: tuple[Pattern, ...] | None = None
    tags: dict[Pattern, KindName] | None = None
    default_kind: KindName = "incident"


class TelegramSettings(_Section):
    enabled: bool = False
    token_env: EnvVariable | None = None
    token_credential: CredentialName | None = None
    chat_ids: tuple[int, ...] = ()
    base_url: Annotated[str, AfterValidator(_check_http_url)] = "https://api.telegram.org"
    max_attempts: PositiveInt = 8

    @model_validator(mode="after")
    def _check_enabled_can_send(self) -> Self:
        token = _configured_source(self, "token")
        if self.enabled and token is None:
            raise _InvalidKey(("enabled",), "needs token_env or token_credential")
        if self.enabled and not self.chat_ids:
            raise _InvalidKey(("chat_ids",), "needs at least one chat when enabled")
        return self

    @property
    def token(self) -> SecretRef | None:
        return _secret_ref(self.token_env, self.token_credential)


def _check_phone_region(code: str) -> str:
    code = code.upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"unknown phone region '{code}' (ISO 3166 code, e.g. RU)")
    return code


def _check_base64_key(value: str) -> str:
    try:
        key = base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValueError("not base64") from None
    if len(key) != 32:
        raise ValueError(f"an Ed25519 public key has 32 bytes, not {len(key)}")
    return value


def _needs_secret_when_enabled(model: TelephonyProviderSettings, *secrets: str) -> None:
    for secret in secrets:
        key = _configured_source(model, secret)
        if model.enabled and key is None:
            options = " or ".join(_source_keys(model, secret))
            raise _InvalidKey(("enabled",), f"needs {options}")


class TelephonyProviderSettings(_Section):
    enabled: bool = False
    # Empty: [telephony] missed_call_priority.
    missed_call_priority: PriorityName | None = None
    # Seconds an ended call waits for its other legs' events before the desk is told;
    # empty: the adapter's own (Twilio 15, Telnyx 10, the others 0).
    settle_seconds: Annotated[float, Field(ge=0, le=3600)] | None = None


class GenericCtiSettings(TelephonyProviderSettings):
    token_env: EnvVariable | None = None
    token_credential: CredentialName | None = None
    signature_secret_env: EnvVariable | None = None
    signature_secret_credential: CredentialName | None = None
    blocked_numbers: tuple[Text, ...] = ()

    @model_validator(mode="after")
    def _check_secrets(self) -> Self:
        _needs_secret_when_enabled(self, "token")
        _configured_source(self, "signature_secret")
        return self

    @property
    def token(self) -> SecretRef | None:
        return _secret_ref(self.token_env, self.token_credential)

    @property
    def signature_secret(self) -> SecretRef | None:
        return _secret_ref(self.signature_secret_env, self.signature_secret_credential)


class TwilioSettings(TelephonyProviderSettings):
    auth_token_env: EnvVariable | None = None
    auth_token_credential: CredentialName | None = None
    public_base_url: Annotated[str, AfterValidator(_check_http_url)] | None = None

    @model_validator(mode="after")
    def _check_secrets(self) -> Self:
        _needs_secret_when_enabled(self, "auth_token")
        return self

    @property
    def auth_token(self) -> SecretRef | None:
        return _secret_ref(self.auth_token_env, self.auth_token_credential)


class ZadarmaSettings(TelephonyProviderSettings):
    api_secret_env: EnvVariable | None = None
    api_secret_credential: CredentialName | None = None

    @model_validator(mode="after")
    def _check_secrets(self) -> Self:
        _needs_secret_when_enabled(self, "api_secret")
        return self

    @property
    def api_secret(self) -> SecretRef | None:
        return _secret_ref(self.api_secret_env, self.api_secret_credential)


class MangoSettings(TelephonyProviderSettings):
    api_key_env: EnvVariable | None = None
    api_key_credential: CredentialName | None = None
    api_salt_env: EnvVariable | None = None
    api_salt_credential: CredentialName | None = None

    @model_validator(mode="after")
    def _check_secrets(self) -> Self:
        _needs_secret_when_enabled(self, "api_key", "api_salt")
        return self

    @property
    def api_key(self) -> SecretRef | None:
        return _secret_ref(self.api_key_env, self.api_key_credential)

    @property
    def api_salt(self) -> SecretRef | None:
        return _secret_ref(self.api_salt_env, self.api_salt_credential)


class TelnyxSettings(TelephonyProviderSettings):
    # The account's public key (Mission Control, Keys & Credentials): not a secret.
    public_key: Annotated[str, AfterValidator(_check_base64_key)] | None = None

    @model_validator(mode="after")
    def _check_key(self) -> Self:
        if self.enabled and self.public_key is None:
            raise _InvalidKey(("enabled",), "needs public_key")
        return self


class TelephonySettings(_Section):
    """Calls from PBXs and VoIP providers; other installed adapters' tables are kept as
    tables and validated by their adapter at start."""

    model_config = ConfigDict(extra="allow", frozen=True, validate_default=True)
    __pydantic_extra__: dict[Name, ProviderTable]

    default_region: Annotated[str, AfterValidator(_check_phone_region)] = "RU"
    missed_call_priority: PriorityName = "P2"
    generic: GenericCtiSettings = Field(default_factory=_table)
    twilio: TwilioSettings = Field(default_factory=_table)
    zadarma: ZadarmaSettings = Field(default_factory=_table)
    mango: MangoSettings = Field(default_factory=_table)
    telnyx: TelnyxSettings = Field(default_factory=_table)

    @property
    def providers(self) -> dict[str, TelephonyProviderSettings | dict[str, Any]]:
        """Every provider's table by name, the built-in ones and the others."""
        built_in: dict[str, TelephonyProviderSettings | dict[str, Any]] = {
            name: getattr(self, name)
            for name, field in type(self).model_fields.items()
            if isinstance(field.annotation, type)
            and issubclass(field.annotation, TelephonyProviderSettings)
        }
        return built_in | dict(self.model_extra or {})

    def enabled(self) -> dict[str, TelephonyProviderSettings | dict[str, Any]]:
        return {
            name: table
            for name, table in self.providers.items()
            if (table["enabled"] if isinstance(table, dict) else table.enabled)
        }


def _fill_empty(section: Any, key: str, value: str) -> Any:
    if isinstance(section, dict) and section.get(key, "") == "":
        return {**section, key: value}
    return section


class Settings(_Section):
    daemon: DaemonSettings = Field(default_factory=_table)
    storage: StorageSettings = Field(default_factory=_table)
    desk: DeskSettings = Field(default_factory=_table)
    packages: dict[Name, PackageSettings] = Field(default_factory=_default_packages)
    smtp: SmtpListenerSettings = Field(default_factory=_table)
    pipeline: PipelineSettings = Field(default_factory=_table)
    imap: tuple[ImapMailbox, ...] = ()
    http: HttpSettings = Field(default_factory=_table)
    outbound: OutboundSettings = Field(default_factory=_table)
    telegram: TelegramSettings = Field(default_factory=_table)
    parsing: ParsingSettings = Field(default_factory=_table)
    classify: ClassifySettings = Field(default_factory=_table)
    telephony: TelephonySettings = Field(default_factory=_table)

    @model_validator(mode="before")
    @classmethod
    def _default_into_state_dir(cls, data: Any) -> Any:
        """An empty storage.url or outbound.folder names a place in daemon.state_dir."""
        if not isinstance(data, dict):
            return data
        daemon = data.get("daemon")
        state_dir = daemon.get("state_dir") if isinstance(daemon, dict) else None
        if not isinstance(state_dir, str):
            # Absent; or wrong, which its own field reports.
            state_dir = _DEFAULT_STATE_DIR
        database = Path(state_dir, "intake.sqlite3")
        return data | {
            "storage": _fill_empty(data.get("storage", {}), "url", f"sqlite:///{database}"),
            "outbound": _fill_empty(
                data.get("outbound", {}), "folder", str(Path(state_dir, "outbound"))
            ),
        }

    @field_validator("imap")
    @classmethod
    def _check_unique_mailbox_names(
        cls, mailboxes: tuple[ImapMailbox, ...]
    ) -> tuple[ImapMailbox, ...]:
        first: dict[str, int] = {}
        for index, mailbox in enumerate(mailboxes):
            if mailbox.name in first:
                raise _InvalidKey(
                    (index, "name"),
                    f"duplicate mailbox name '{mailbox.name}' (also imap[{first[mailbox.name]}])",
                )
            first[mailbox.name] = index
        return mailboxes

    @model_validator(mode="after")
    def _check_default_package_exists(self) -> Self:
        if self.desk.default_package not in self.packages:
            defined = ", ".join(sorted(self.packages)) or "none"
            raise _InvalidKey(
                ("desk", "default_package"),
                f"no package '{self.desk.default_package}' (defined: {defined})",
            )
        return self


# --- loading ------------------------------------------------------------------------------


def locate_config(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Path | None:
    """The file load_settings() reads: `path`, else $INTAKE_CONFIG, else ./config.toml if it
    exists; None means the built-in defaults. A named file that is missing is a ConfigError."""
    cwd = Path.cwd() if cwd is None else cwd
    if path is not None:
        return _existing(cwd / path, "")
    named = _environ(environ).get(CONFIG_ENV, "")
    if named:
        return _existing(cwd / named, f" (named by ${CONFIG_ENV})")
    local = cwd / CONFIG_FILE_NAME
    return local if local.exists() else None


def _existing(path: Path, origin: str) -> Path:
    if not path.exists():
        raise ConfigError([f"{path}: no such file{origin}"])
    return path


def load_settings(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    verify_secrets: bool = True,
) -> Settings:
    """The validated settings (see locate_config for which file); raises ConfigError listing
    every problem found. Relative paths are taken from `cwd`, secrets looked up in `environ`
    (unless `verify_secrets` is false: they are then read, and may fail, only when used)."""
    environ = _environ(environ)
    cwd = Path.cwd() if cwd is None else cwd
    found = locate_config(path, environ=environ, cwd=cwd)
    data = {} if found is None else _read_toml(found)
    try:
        return Settings.model_validate(
            data, context=_LoadContext(environ, cwd, verify_secrets)
        )
    except ValidationError as error:
        raise ConfigError([_describe(detail) for detail in error.errors()]) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"{path}: invalid TOML: {error}"]) from None
    except UnicodeDecodeError as error:
        raise ConfigError([f"{path}: invalid TOML: not UTF-8 at byte {error.start}"]) from None
    except OSError as error:
        raise ConfigError([f"{path}: cannot read: {error.strerror}"]) from None


_REASONS = {
    "extra_forbidden": "unknown key",
    "missing": "missing required key",
    "model_type": "must be a table",
    "dict_type": "must be a table",
    "tuple_type": "must be an array",
}


def _describe(error: ErrorDetails) -> str:
    loc = error["loc"]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, _InvalidKey):
        loc = (*loc, *cause.loc)
    reason = str(cause) if error["type"] == "value_error" else error["msg"]
    return f"{_key_path(loc)}: {_REASONS.get(error['type'], reason)}"


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key_path(loc: tuple[str | int, ...]) -> str:
    """`('imap', 0, 'port')` -> `imap[0].port`, spelled as in the TOML file."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part != "[key]":  # pydantic's mark of a bad table key; the key precedes it
            key = part if _BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
            path = f"{path}.{key}" if path else key
    return path
