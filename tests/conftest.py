"""
Shared test support: running the installed `twistd xrelay` as a user would, and
finding free loopback ports.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import attrs
import pytest

# The configuration-file fixtures, for the tests beside tests/test_config.py (asked for
# by parameter name, so those modules need not import them).
from tests.test_config import folder, password_hash  # noqa: F401 (fixtures)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on this loopback address right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def bin_path(name: str) -> str:
    """A console script installed beside the running interpreter (twistd, xrelay)."""
    return os.path.join(os.path.dirname(sys.executable), name)


@attrs.define
class RelayProcess:
    """A `twistd -n xrelay` child process and its log."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_port(self, port: int, host: str = "127.0.0.1", timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"twistd exited {self.process.returncode}:\n{self.log()}")
            try:
                with socket.create_connection((host, port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"nothing listens on {host}:{port}:\n{self.log()}")

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture
def run_relay(tmp_path: Path) -> Iterator[object]:
    """
    Start `twistd -n xrelay [args]` in a folder; every process started is stopped at the
    end of the test.
    """
    started: list[RelayProcess] = []

    def start(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None
              ) -> RelayProcess:
        cwd = cwd or tmp_path
        log_path = cwd / f"twistd-{len(started)}.log"
        environment = dict(os.environ)
        environment.pop("XRELAY_CONFIG", None)
        # The sandbox default's admin page: a free port, never 8025 (tests run side by side).
        environment["XRELAY_SANDBOX_ADMIN_PORT"] = str(free_port())
        environment.update(env or {})
        process = subprocess.Popen(
            [bin_path("twistd"), "-n", "--pidfile=", f"--logfile={log_path}", "xrelay",
             *args],
            cwd=cwd, env=environment, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=open(cwd / "stderr.txt", "ab"),
        )
        relay = RelayProcess(process, log_path)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()
