"""
The configuration keys for real devices: relay.bare_lf_end_of_data, server and per
listener tls_min_version, per listener starttls; their mistakes named, and the
check-config warning for a listener that accepts legacy TLS.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_config import edit
from xrelay.cli import main
from xrelay.config import ConfigError
from xrelay.configfile import read_config

LEGACY = ('{{ endpoint = "tcp:2465:interface=127.0.0.1", implicit_tls = true }}',
          '{ endpoint = "tcp:2465:interface=127.0.0.1", implicit_tls = true }, '
          '{ endpoint = "tcp:2526:interface=127.0.0.1", starttls = false }, '
          '{ endpoint = "tcp:2527:interface=127.0.0.1", tls_min_version = "1.0" }')


def legacy_file(folder: Path) -> str:
    text = (folder / "xrelay.toml").read_text()
    old = LEGACY[0].replace("{{", "{").replace("}}", "}")
    assert old in text
    (folder / "xrelay.toml").write_text(text.replace(old, LEGACY[1], 1))
    return str(folder / "xrelay.toml")


def test_defaults(folder: Path) -> None:
    config = read_config(str(folder / "xrelay.toml"))
    assert config.relay.bare_lf_end_of_data == "trusted"
    assert config.server.tls_min_version == "1.2"
    assert [(listener.starttls, listener.tls_min_version) for listener in config.server.listen] == [
        (None, None), (None, None)]
    assert config.warnings() == []


def test_listener_keys_and_legacy_warning(folder: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = legacy_file(folder)
    edit(folder, "[relay]\n", '[relay]\nbare_lf_end_of_data = "never"\n')
    config = read_config(path)
    assert config.relay.bare_lf_end_of_data == "never"
    assert [(listener.starttls, listener.tls_min_version) for listener in config.server.listen] == [
        (None, None), (None, None), (False, None), (None, "1.0")]
    assert main(["check-config", path]) == 0
    out = capsys.readouterr().out
    assert "server.listen[2] (tcp:2526:interface=127.0.0.1): starttls = false, so " \
        "[[users]] cannot log in on it" in out
    [warning] = [line for line in out.splitlines() if "legacy TLS" in line]
    assert warning.startswith("# warning: ")
    assert "server.listen[3] (tcp:2527:interface=127.0.0.1) accepts legacy TLS 1.0" in warning
    assert 'tls_min_version = "1.0"' in out and "starttls = false" in out
    assert "None" not in out


MISTAKES = {
    "bad version": ('hostname = "relay.example.com"',
                    'hostname = "relay.example.com"\ntls_min_version = "1.4"',
                    "server.tls_min_version", "must be one of '1.0', '1.1', '1.2', '1.3'"),
    "bad listener version": ("implicit_tls = true }}", 'tls_min_version = "TLSv1" }}',
                             "server.listen[1].tls_min_version", "must be one of"),
    "starttls on implicit": ("implicit_tls = true }}", "implicit_tls = true, "
                             "starttls = true }}", "server.listen[1].starttls",
                             "never offers STARTTLS"),
    "bad bare LF mode": ("[relay]\n", '[relay]\nbare_lf_end_of_data = "always"\n',
                         "relay.bare_lf_end_of_data", 'must be "trusted" or "never"'),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_mistake_named(folder: Path, mistake: str) -> None:
    old, new, key, words = MISTAKES[mistake]
    text = (folder / "xrelay.toml").read_text()
    old, new = old.replace("}}", "}"), new.replace("}}", "}")
    assert old in text, old
    (folder / "xrelay.toml").write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError) as caught:
        read_config(str(folder / "xrelay.toml"))
    line = str(caught.value)
    assert key in line and words in line, line


def test_starttls_without_certificate(folder: Path) -> None:
    text = (folder / "xrelay.toml").read_text()
    text = text.replace('tls_cert = "relay.pem"\ntls_key = "relay.key"\n', "")
    text = text.replace(', { endpoint = "tcp:2465:interface=127.0.0.1", implicit_tls = true }',
                        ', { endpoint = "tcp:2466", starttls = true }')
    (folder / "xrelay.toml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        read_config(str(folder / "xrelay.toml"))
    assert "server.listen[1].starttls: STARTTLS needs server.tls_cert" in str(caught.value)
