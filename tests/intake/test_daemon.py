"""`intake run` as systemd runs it: READY after start, clean exit on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

INTAKE = str(Path(sys.executable).with_name("intake"))
UNIT = Path(__file__).parents[2] / "systemd" / "omnivox-intake.service"


def _notifications(sock: socket.socket, until: str, timeout: float = 30.0) -> list[str]:
    sock.settimeout(timeout)
    received: list[str] = []
    while until not in received:
        received.extend(sock.recv(4096).decode().splitlines())
    return received


def test_run_reports_ready_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\nshutdown_timeout = 5\n', encoding="utf-8"
    )
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        process = subprocess.Popen(
            [INTAKE, "--config", str(config), "run"],
            env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert "READY=1" in _notifications(notify, "READY=1")
            # The embedded default: an SQLite database created and migrated on first start.
            assert (tmp_path / "state" / "intake.sqlite3").exists()
            process.send_signal(signal.SIGTERM)
            assert "STOPPING=1" in _notifications(notify, "STOPPING=1")
            _, stderr = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 0, stderr
    assert "ready; services: scheduler, pipeline, smtp" in stderr
    assert stderr.rstrip().endswith("stopped")


def test_run_refuses_a_broken_configuration(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[http]\nport = "eighty"\n', encoding="utf-8")
    result = subprocess.run(
        [INTAKE, "--config", str(config), "run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("http.port: ")
    assert "Traceback" not in result.stderr


def _unit_for_this_machine(tmp_path: Path) -> Path:
    # verify checks that ExecStart exists; point it at this checkout's virtualenv.
    unit = tmp_path / UNIT.name
    unit.write_text(
        UNIT.read_text(encoding="utf-8").replace("/opt/omnivox-intake/.venv/bin/intake", INTAKE),
        encoding="utf-8",
    )
    return unit


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is required (Debian package systemd)", pytrace=False)
    return path


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    result = subprocess.run(
        [_systemd_analyze(), "verify", str(_unit_for_this_machine(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_systemd_unit_is_hardened(tmp_path: Path) -> None:
    # The threshold is on the 0-100 scale: 20 is an exposure of 2.0, "OK" in its words.
    result = subprocess.run(
        [
            _systemd_analyze(),
            "security",
            "--offline=yes",
            "--threshold=20",
            str(_unit_for_this_machine(tmp_path)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:]


def test_run_stops_with_one_line_when_a_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "config.toml"
        config.write_text(
            f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n\n[smtp]\nport = {port}\n'
            "\n[http]\nenabled = false\n",
            encoding="utf-8",
        )
        result = subprocess.run(
            [INTAKE, "--config", str(config), "run"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"error: smtp: cannot listen on 127.0.0.1:{port}: address already in use"
    )
    assert "Traceback" not in result.stderr
