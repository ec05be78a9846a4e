"""A throw-away Dovecot IMAP server on a free loopback port, for the IMAP source's tests.

Everything lives under a temporary directory of its own (config, state, logs, mail), so
the machine's own Dovecot, if any, is untouched. Mail is owned by the system's ``mail``
user, which Dovecot accepts as a mail user (it refuses UID 0). Each test takes a user of
its own, so tests never see each other's mail.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from imapclient import IMAPClient

START_TIMEOUT = 15.0


class DovecotMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class ImapUser:
    name: str
    password: str


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _wait_until(condition: object, what: str, timeout: float = START_TIMEOUT) -> None:
    # Dovecot daemonizes: there is no event to await, only its state to look at.
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


class Dovecot:
    def __init__(
        self,
        *,
        oauth2_introspection_url: str | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        """``tls``: a certificate and its key; then IMAPS is served on ``tls_port`` and
        STARTTLS offered on ``port``."""
        binary = shutil.which("dovecot") or (
            "/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None
        )
        if binary is None:
            raise DovecotMissing(
                "Dovecot is required for the IMAP tests and is not installed; run "
                "scripts/test-services (as root it installs the Debian package dovecot-imapd)"
            )
        self.binary = binary
        mail = pwd.getpwnam("mail")
        self.uid, self.gid = mail.pw_uid, mail.pw_gid
        # Not under pytest's private (0700) temp dir: Dovecot's unprivileged processes
        # read the users' files and the mail from here.
        self.root = Path(tempfile.mkdtemp(prefix="intake-dovecot-"))
        self.root.chmod(0o755)
        self.port = free_port()
        self.tls = tls
        self.tls_port = free_port() if tls is not None else 0
        self.config = self.root / "dovecot.conf"
        self.users = self.root / "users"
        self.log = self.root / "dovecot.log"
        self.homes = self.root / "home"
        self.homes.mkdir()
        self.users.mkdir()
        self.oauth2_introspection_url = oauth2_introspection_url
        self._write_config()

    def _write_config(self) -> None:
        oauth2 = ""
        if self.oauth2_introspection_url is not None:
            oauth2_conf = self.root / "oauth2.conf.ext"
            oauth2_conf.write_text(
                f"introspection_mode = post\n"
                f"introspection_url = {self.oauth2_introspection_url}\n"
                "username_attribute = username\n"
                "active_attribute = active\n"
                "active_value = true\n"
            )
            oauth2 = f"passdb {{\n  driver = oauth2\n  args = {oauth2_conf}\n}}\n"
        self.config.write_text(
            f"""base_dir = {self.root}/run
state_dir = {self.root}/state
log_path = {self.log}
protocols = imap
shutdown_clients = yes
listen = 127.0.0.1
{self._ssl_settings()}
disable_plaintext_auth = no
auth_mechanisms = plain login xoauth2 oauthbearer
auth_cache_size = 0
mail_location = maildir:~/Maildir
first_valid_uid = {self.uid}
first_valid_gid = {self.gid}
default_login_user = dovenull
default_internal_user = dovecot
default_internal_group = dovecot
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.tls_port}
  }}
}}
protocol imap {{
  mail_max_userip_connections = 200
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {self.users}/%u
}}
{oauth2}userdb {{
  driver = passwd-file
  args = {self.users}/%u
}}
"""
        )

    def _ssl_settings(self) -> str:
        if self.tls is None:
            return "ssl = no"
        cert, key = self.tls
        return f"ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}"

    @property
    def pid(self) -> int | None:
        try:
            return int((self.root / "run" / "master.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    @property
    def running(self) -> bool:
        pid = self.pid
        return pid is not None and _alive(pid)

    def start(self) -> None:
        # Output to a file, not a pipe: the daemon keeps the inherited descriptors open,
        # and a pipe would never reach its end.
        with (self.root / "start.log").open("w+") as output:
            result = subprocess.run(
                [self.binary, "-c", str(self.config)],
                stdout=output,
                stderr=subprocess.STDOUT,
                check=False,
            )
            output.seek(0)
            said = output.read().strip()
        if result.returncode != 0:
            raise RuntimeError(f"dovecot did not start: {said}\n{self._log_tail()}")
        _wait_until(lambda: _port_open(self.port), f"dovecot on port {self.port}")

    def stop(self) -> None:
        """Stop the server and end every session, as a restart of the machine's server does."""
        pid = self.pid
        if pid is None or not self.running:
            return
        children = _children(pid)
        os.kill(pid, signal.SIGTERM)
        _wait_until(lambda: not self.running, "dovecot to stop")
        # Here the master leaves its imap processes behind (their sessions would go on).
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        _wait_until(lambda: not any(_alive(child) for child in children), "dovecot's processes")

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        except FileNotFoundError:
            return ""

    def add_user(self) -> ImapUser:
        user = ImapUser(f"u{secrets.token_hex(5)}", secrets.token_hex(8))
        home = self.homes / user.name
        home.mkdir()
        os.chown(home, self.uid, self.gid)
        # A passwd-file per user: Dovecot notices a new file at once, while it may miss
        # a change to one it already read within the same second.
        (self.users / user.name).write_text(
            f"{user.name}:{{PLAIN}}{user.password}:{self.uid}:{self.gid}::{home}::\n"
        )
        return user

    @contextmanager
    def client(self, user: ImapUser) -> Iterator[IMAPClient]:
        client = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=30)
        try:
            client.login(user.name, user.password)
            yield client
        finally:
            try:
                client.logout()
            except Exception:
                client.shutdown()

    def append(self, user: ImapUser, messages: Sequence[bytes], folder: str = "INBOX") -> None:
        with self.client(user) as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            if len(messages) == 1:
                client.append(folder, messages[0])
            else:
                client.multiappend(folder, list(messages))

    def uidvalidity(self, user: ImapUser, folder: str = "INBOX") -> int:
        with self.client(user) as client:
            return int(client.folder_status(folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"])

    def recreate_folder(self, user: ImapUser, folder: str) -> int:
        """Delete and create ``folder`` again: a new UIDVALIDITY, as after a server
        migration; returns it."""
        with self.client(user) as client:
            before = int(client.folder_status(folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"])
            client.delete_folder(folder)
            client.create_folder(folder)
            after = int(client.folder_status(folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"])
        assert after != before
        return after

    def messages(self, user: ImapUser, folder: str = "INBOX") -> dict[bytes, set[bytes]]:
        """Message-ID -> flags (but \\Recent) of each message in ``folder``; {} if it is absent."""
        with self.client(user) as client:
            if not client.folder_exists(folder):
                return {}
            client.select_folder(folder, readonly=True)
            uids = client.search()
            if not uids:
                return {}
            fetched = client.fetch(uids, ["FLAGS", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
        result: dict[bytes, set[bytes]] = {}
        for data in fetched.values():
            header = data[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"]
            message_id = header.split(b":", 1)[1].strip() if b":" in header else b""
            # \Recent is the server's note about sessions, not the message's state.
            result[message_id] = set(data[b"FLAGS"]) - {b"\\Recent"}
        return result
