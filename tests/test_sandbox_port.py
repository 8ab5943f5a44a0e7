"""
Where the sandbox default listens: C{$XRELAY_SANDBOX_PORT} and
C{$XRELAY_SANDBOX_INTERFACE}, and the address the start-up announcement tells a user to
send to.
"""

from __future__ import annotations

import pytest

from xrelay.config import ConfigError, sandbox_default
from xrelay.service import client_reach


def listen(monkeypatch: pytest.MonkeyPatch, port: str | None,
           interface: str | None) -> list[str]:
    for name, value in (("XRELAY_SANDBOX_PORT", port), ("XRELAY_SANDBOX_INTERFACE", interface)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    return [listener.endpoint for listener in sandbox_default().server.listen]


def test_sandbox_port_defaults_to_2525(monkeypatch: pytest.MonkeyPatch) -> None:
    assert listen(monkeypatch, None, None) == ["tcp:2525:interface=127.0.0.1"]
    assert listen(monkeypatch, "", None) == ["tcp:2525:interface=127.0.0.1"]


def test_sandbox_port_moves_the_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    assert listen(monkeypatch, "2600", None) == ["tcp:2600:interface=127.0.0.1"]
    assert listen(monkeypatch, "2600", "0.0.0.0") == ["tcp:2600:interface=0.0.0.0"]
    assert listen(monkeypatch, "2600", "::1") == [r"tcp6:2600:interface=\:\:1"]
    assert listen(monkeypatch, None, "0.0.0.0") == ["tcp:2525:interface=0.0.0.0"]


@pytest.mark.parametrize("value", ["0", "65536", "smtp", "-1", "25.5"])
def test_a_bad_sandbox_port_names_the_variable_and_the_fix(
        monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        listen(monkeypatch, value, None)
    assert str(raised.value) == (f"$XRELAY_SANDBOX_PORT: {value!r} is not a port number; "
                                 "write one from 1 to 65535, or unset it for 2525")


@pytest.mark.parametrize("endpoint, reach", [
    ("tcp:2525:interface=127.0.0.1", "127.0.0.1:2525"),
    ("tcp:2600:interface=0.0.0.0", "127.0.0.1:2600"),
    (r"tcp6:2601:interface=\:\:1", "[::1]:2601"),
    (r"tcp6:2602:interface=\:\:", "[::1]:2602"),
])
def test_the_announcement_names_the_real_address(endpoint: str, reach: str) -> None:
    assert client_reach(endpoint) == reach
