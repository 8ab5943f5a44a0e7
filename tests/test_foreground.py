"""
`xrelay run`: the daemon in the foreground as `twistd -n --pidfile= xrelay` runs it, with
JSON lines on standard output when $XRELAY_LOG_FORMAT says so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest_twisted
from twisted.internet import threads

from tests.conftest import RelayProcess, bin_path, free_port
from tests.test_end_to_end import relay_one_message, sandbox, write_config  # noqa: F401 (fixture)
from xrelay.foreground import twistd_arguments


def test_run_is_twistd_in_the_foreground() -> None:
    assert twistd_arguments("/etc/xrelay/xrelay.toml", "text") == [
        "twistd", "--nodaemon", "--pidfile=", "xrelay", "--config",
        "/etc/xrelay/xrelay.toml"]
    assert twistd_arguments(None, "json") == [
        "twistd", "--nodaemon", "--pidfile=", "--logger",
        "xrelay.foreground.json_observer", "xrelay"]


def test_unknown_log_format_is_a_usage_mistake(tmp_path: Path) -> None:
    result = subprocess.run([bin_path("xrelay"), "run"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60,
                            env=dict(os.environ, XRELAY_LOG_FORMAT="xml"))
    assert result.returncode == 2
    assert "XRELAY_LOG_FORMAT='xml': write one of text, json" in result.stderr


@pytest_twisted.inlineCallbacks
def test_xrelay_run_relays_and_logs_json_lines(tmp_path: Path, sandbox) -> None:  # noqa: F811
    port = free_port()
    config = write_config(tmp_path, sandbox, port)
    stdout = tmp_path / "stdout.txt"
    env = dict(os.environ, XRELAY_LOG_FORMAT="json")
    env.pop("XRELAY_CONFIG", None)
    process = subprocess.Popen(
        [bin_path("xrelay"), "run", "--config", str(config)], cwd=tmp_path, env=env,
        stdin=subprocess.DEVNULL, stdout=open(stdout, "wb"), stderr=subprocess.STDOUT)
    relay = RelayProcess(process, stdout)
    try:
        delivered = yield relay_one_message(relay, port, sandbox, b"from xrelay run")
        assert b"Subject: from xrelay run" in delivered.data
    finally:
        status = yield threads.deferToThread(relay.stop)
    assert status == -signal.SIGTERM
    events = [json.loads(line) for line in stdout.read_text().splitlines() if line]
    namespaces = {event.get("log_namespace") for event in events}
    assert "xrelay" in namespaces or any(n and n.startswith("xrelay.") for n in namespaces)
    assert any(event.get("log_format") == "Server Shut Down." for event in events)
