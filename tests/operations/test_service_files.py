"""
The systemd unit runs twistd in the foreground as a dedicated user with the hardening
the README promises, reloads with SIGHUP, and logs to the journal (no log file).
"""

from __future__ import annotations

from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "systemd" / "xrelay.service"


def service_section() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    section = None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_unit_runs_twistd_hardened() -> None:
    s = service_section()
    # The venv contrib/install.sh makes: a bare twistd is not on systemd's search path.
    assert s["ExecStart"] == ["/opt/xrelay/bin/twistd --nodaemon --pidfile= xrelay "
                              "--config /etc/xrelay/xrelay.toml"]
    assert "--logfile" not in s["ExecStart"][0]  # standard output: the journal
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["User"] == ["xrelay"] and s["StateDirectory"] == ["xrelay"]
    assert s["StateDirectoryMode"] == ["0700"]
    # systemd would make /etc/xrelay root:root, unreadable by the service; install.sh
    # makes it root:xrelay 0750 instead.
    assert "ConfigurationDirectory" not in s
    for key, value in {"ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "NoNewPrivileges": "yes",
                       "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
                       "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6"}.items():
        assert s[key] == [value], key
