"""
Helpers for the setup tests: a relay on the sandbox default (as `twistd -n xrelay` with
no configuration runs it) started in this process, `xrelay setup` in a pseudo-terminal,
and an admin approving a device code on the sandbox's own sign-in page.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path
from typing import Any

import attrs
import requests

from tests.conftest import free_port


@attrs.define
class SandboxRelay:
    """The relay on the sandbox default, in C{folder} (its ./xrelay-sandbox)."""

    folder: Path
    relay: Any
    admin_port: int

    @property
    def sandbox(self) -> Any:
        return self.relay.sandbox

    @property
    def state_dir(self) -> Path:
        return self.folder / "xrelay-sandbox" / "state"

    @property
    def admin_url(self) -> str:
        return f"http://localhost:{self.admin_port}"

    def admin_password(self) -> str:
        return (self.folder / "xrelay-sandbox" / "admin-password.txt").read_text().strip()


def start_sandbox_relay(folder: Path, monkeypatch: Any) -> SandboxRelay:
    from twisted.internet import reactor

    from xrelay.sandboxdefault import sandbox_with_dropins
    from xrelay.service import makeService

    smtp_port, admin_port = free_port(), free_port()
    monkeypatch.setenv("XRELAY_SANDBOX_PORT", str(smtp_port))
    monkeypatch.setenv("XRELAY_SANDBOX_ADMIN_PORT", str(admin_port))
    config = sandbox_with_dropins(str(folder / "xrelay-sandbox"))
    relay = makeService(config, reactor=reactor)
    relay.startService()
    # Seconds, not minutes, but still a wait: the setup must poll through it.
    relay.sandbox.entra.replication_delay = 3.0
    relay.sandbox.exchange_admin.acceptance_delay = 3.0
    return SandboxRelay(folder, relay, admin_port)


def bin_path(name: str) -> str:
    import sys

    return os.path.join(os.path.dirname(sys.executable), name)


@attrs.define
class Terminal:
    """A command in a pseudo-terminal: what it printed so far, and its exit status."""

    process: subprocess.Popen[bytes]
    fd: int
    output: str = ""

    def read_until(self, pattern: str, timeout: float = 120.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.output)
            if match:
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not shown in time:\n{self.output}")
            self._read(0.2)

    def _read(self, wait: float) -> bool:
        # poll, not select: a long test session may hold descriptors past FD_SETSIZE.
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        if not poller.poll(wait * 1000):
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:
            return False
        if not data:
            return False
        self.output += data.decode("utf-8", "replace").replace("\r\n", "\n")
        return True

    def wait(self, timeout: float = 300.0) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"still running:\n{self.output}")
            self._read(0.2)
        while self._read(0.1):
            pass
        os.close(self.fd)
        return int(self.process.returncode)


def run_in_terminal(args: list[str], cwd: Path) -> Terminal:
    """`xrelay ARGS` with a pseudo-terminal as its standard input and output."""
    master, slave = pty.openpty()
    environment = dict(os.environ)
    environment.pop("XRELAY_CONFIG", None)
    environment["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    process = subprocess.Popen([bin_path("xrelay"), *args], cwd=cwd, env=environment,
                               stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    return Terminal(process, master)


def approve_device_code(sandbox: Any, url: str, code: str, upn: str,
                        decline: bool = False) -> None:
    """The admin enters the code on the sandbox's device login page and signs in."""
    form = {"otc": code, "login": upn, "passwd": sandbox.password(upn),
            "action": "cancel" if decline else "accept"}
    page = requests.post(url, data=form, verify=sandbox.ca_file, timeout=30)
    assert page.status_code == 200, page.text


def device_code_shown(terminal: Terminal) -> tuple[str, str]:
    url = terminal.read_until(r"open\s+(https://\S+)").group(1)
    code = terminal.read_until(r"enter\s+(\S+)").group(1)
    return url, code
