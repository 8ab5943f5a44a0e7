"""
The fault suite's world: the sandbox providers in the test process (so that their
mailbox outlives the relay), a configuration with one account, mail queued in the spool
before the relay starts, and the real relay (`twistd -n xrelay`) started on a state
folder a test has damaged.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Callable

import attrs
import pytest
from twisted.internet import defer, reactor, threads
from twisted.internet.task import deferLater

from tests.conftest import RelayProcess, free_port
from tests.test_end_to_end import sandbox  # noqa: F401 (fixture: the sandbox in this process)

#: Log lines at warning level or above (twistd's file log: "<time> [<system>#<level>]").
_LOUD = re.compile(r"#(warn|error|critical)\]")


@attrs.define
class World:
    """One relay's configuration and state folder, and the sandbox it delivers to."""

    tmp_path: Path
    sandbox: Any
    run_relay: Callable[..., RelayProcess]
    port: int = attrs.field(factory=free_port)

    @property
    def state(self) -> Path:
        return self.tmp_path / "state"

    @property
    def config(self) -> Path:
        return self.tmp_path / "xrelay.toml"

    def write_config(self, extra: str = "", **account_keys: Any) -> Path:
        account = dict(self.sandbox.default_account())
        account["messages_per_minute"] = 0
        account.update(account_keys)
        lines = ["[server]", f'listen = ["tcp:{self.port}:interface=127.0.0.1"]',
                 'hostname = "relay.test"', f"state_dir = {json.dumps(str(self.state))}",
                 "shutdown_timeout = 5", "", "[delivery]", "first_retry = 2",
                 "max_retry_interval = 30", "", "[[accounts]]"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in account.items()]
        self.config.write_text("\n".join(lines) + "\n" + extra)
        return self.config

    def queue_mail(self, count: int, tag: str = "fault") -> list[str]:
        """Commit C{count} messages to the spool while no relay runs (the ISpool API)."""
        from xrelay.envelope import Envelope
        from xrelay.spool import Spool

        def inline(f: Callable[..., Any], *args: Any) -> Any:
            return defer.maybeDeferred(f, *args)

        spool = Spool(str(self.state / "spool"), reactor=reactor, run_blocking=inline)
        ids: list[str] = []
        for n in range(count):
            envelope = Envelope("printer@example.com", ("client@example.net",),
                                client_address="127.0.0.1", client_helo="printer",
                                account="sandbox", received_at=time.time())
            message = spool.incoming(envelope)
            message.write(f"From: printer@example.com\r\nTo: client@example.net\r\n"
                          f"Subject: {tag} {n}\r\n\r\nqueued before the start\r\n"
                          .encode())
            message.commit().addCallback(ids.append)
        assert len(ids) == count
        return ids

    def start(self, env: dict[str, str] | None = None) -> RelayProcess:
        return self.run_relay("--config", str(self.config), env=env)

    @defer.inlineCallbacks
    def delivered(self, count: int, timeout: float = 90) -> Any:
        """Wait until the sandbox holds C{count} messages; fires with their subjects."""
        deadline = time.monotonic() + timeout
        while len(self.sandbox.mailbox.messages) < count and time.monotonic() < deadline:
            yield deferLater(reactor, 0.2, lambda: None)
        subjects = [re.search(rb"Subject: ([^\r\n]*)", m.data).group(1).decode()
                    for m in self.sandbox.mailbox.messages]
        assert len(subjects) >= count, f"{len(subjects)} of {count} delivered"
        return subjects

    def stop(self, relay: RelayProcess) -> Any:
        """Stop the relay from a thread: the sandbox in this reactor must answer its
        QUIT while it shuts down."""
        return threads.deferToThread(relay.stop)

    def listening(self, relay: RelayProcess) -> Any:
        return threads.deferToThread(relay.wait_for_port, self.port)


def loud_lines(log: str, naming: str) -> list[str]:
    """The warning-or-worse log lines that name C{naming}."""
    return [line for line in log.splitlines() if _LOUD.search(line) and naming in line]


def assert_clean(log: str) -> None:
    """
    No traceback, nothing critical from the start to the stop: every problem was one
    line an operator reads.  (What happens after SIGTERM is not this suite's subject: an
    upstream TLS connection closed while its QUIT reply arrives can log Twisted's
    C{'NoneType' object has no attribute 'bio_read'}; reported separately.)
    """
    running = log.split("Received SIGTERM", 1)[0]
    assert "Traceback" not in running, log
    assert "#critical]" not in running, log


@pytest.fixture
def world(tmp_path: Path, sandbox, run_relay) -> World:  # noqa: F811
    w = World(tmp_path, sandbox, run_relay)
    w.write_config()
    return w
