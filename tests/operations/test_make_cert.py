"""
`xrelay make-cert`: a self-signed certificate with the relay's names and a key only its
owner can read, which the configuration accepts and a listener serves.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography import x509

from xrelay.cli import main
from xrelay.config import Config, ServerConfig
from xrelay.configfile import read_config
from xrelay.inbound.tlsprofile import listener_tls


def test_make_cert_writes_certificate_and_private_key(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cert, key = tmp_path / "relay.pem", tmp_path / "relay.key"
    assert main(["make-cert", "--name", "relay.lan", "--name", "192.168.10.5",
                 "--cert", str(cert), "--key", str(key)]) == 0
    out = capsys.readouterr().out
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert "PRIVATE KEY" not in out and "SHA-256 fingerprint: " in out
    assert f'tls_cert = "{cert}"' in out and f'tls_key = "{key}"' in out
    certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["relay.lan"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["192.168.10.5"]
    assert certificate.issuer == certificate.subject
    # The relay takes the pair: a listener's TLS context loads it.
    tls = listener_tls(Config(server=ServerConfig(hostname="relay.lan", tls_cert=str(cert),
                                                  tls_key=str(key))))
    assert tls is not None and tls.min_version == "1.2"


def test_make_cert_uses_the_configured_hostname_and_never_overwrites(
        tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "secret.txt").write_text("x\n")
    (tmp_path / "xrelay.toml").write_text(
        '[server]\nhostname = "relay.example.com"\nstate_dir = "state"\n\n'
        '[[accounts]]\nname = "main"\nprovider = "microsoft"\nuser = "relay@example.com"\n'
        'flow = "client_credentials"\ntenant = "example.onmicrosoft.com"\n'
        'client_id = "00000000-0000-0000-0000-000000000000"\n'
        'client_secret_file = "secret.txt"\nsenders = ["*@example.com"]\n')
    config_path = str(tmp_path / "xrelay.toml")
    assert read_config(config_path).server.hostname == "relay.example.com"
    cert, key = tmp_path / "a.pem", tmp_path / "a.key"
    assert main(["make-cert", "--config", config_path, "--cert", str(cert),
                 "--key", str(key)]) == 0
    certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["relay.example.com"]
    before = cert.read_bytes()
    assert main(["make-cert", "--name", "x", "--cert", str(cert), "--key", str(key)]) == 1
    assert "exists; pass --force" in capsys.readouterr().err
    assert cert.read_bytes() == before
