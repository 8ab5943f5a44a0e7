"""
Expiry warnings before the outage: an account's certificate ending in 10 days, a client
secret's configured date, and the listener's own TLS certificate, as log warnings (30 and
7 days ahead, once each), the metric xrelay_credential_expiry_timestamp_seconds, a column
on the admin page and warnings from `xrelay check-config`.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from twisted.logger import formatEvent, globalLogPublisher

from tests.admin.conftest import start_relay, write_config
from tests.admin.test_web import Browser, metric_samples  # noqa: F401
from tests.operations.test_commands import xrelay
from xrelay.config import ListenerConfig, ServerConfig
from xrelay.tokens.expiry import DAY, ExpiryWatch, credential_expiries

NOW = datetime.datetime.now(datetime.timezone.utc)


def certificate(directory: Path, name: str, days: float, dns: str = "relay.test"
                ) -> tuple[str, str, float]:
    """A self-signed certificate ending C{days} from now: (cert file, key file, end)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns)])
    end = (NOW + datetime.timedelta(days=days)).replace(microsecond=0)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.TraditionalOpenSSL,
                                   serialization.NoEncryption()))
    os.close(fd)
    return str(cert_path), str(key_path), end.timestamp()


def certificate_account_config(world: Any, days: float, tls_days: float) -> tuple[float, float]:
    """The sandbox account signing in with a certificate ending in C{days}."""
    cert, key, end = certificate(world.tmp, "app", days)
    tls_cert, tls_key, tls_end = certificate(world.tmp, "tls", tls_days)
    app = world.sandbox.default_app
    app.certificates.append(x509.load_pem_x509_certificate(Path(cert).read_bytes()))
    write_config(world, delegated=True, server_extra=f'tls_cert = "{tls_cert}"\ntls_key = "{tls_key}"\n'
                 "require_tls_for_auth = false")
    secret = world.sandbox.default_account()["client_secret_file"]
    text = world.config_path.read_text().replace(
        f'client_secret_file = "{secret}"',
        f'certificate_file = "{cert}"\ncertificate_key_file = "{key}"')
    text = text.replace('name = "boss"', 'name = "boss"\nclient_secret_expires = '
                        f'"{(NOW + datetime.timedelta(days=45)).date().isoformat()}"')
    world.config_path.write_text(text)
    return end, tls_end


@pytest_twisted.ensureDeferred
async def test_certificate_expiring_in_ten_days_warns_and_is_measured(world) -> None:
    end, tls_end = certificate_account_config(world, days=10, tls_days=20)
    logged: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        logged.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observe)
    try:
        relay = start_relay(world)
    finally:
        globalLogPublisher.removeObserver(observe)
    warnings = [line for line in logged if line.startswith("Credential expiry: ")]
    day = datetime.datetime.fromtimestamp(end, datetime.timezone.utc).date().isoformat()
    assert warnings[0] == (
        f"Credential expiry: account sandbox: the certificate {world.tmp / 'app.pem'} "
        f"expires on {day} (in 10 days); upload a new certificate to the app registration "
        "and put it and its key in certificate_file / certificate_key_file")
    assert any(w.startswith("Credential expiry: listener tcp:") and "TLS certificate" in w
               and "(in 20 days)" in w for w in warnings), warnings
    assert len(warnings) == 2  # boss's secret ends in 45 days: no warning yet

    response = await treq.get(world.admin_url + "/metrics")
    s = metric_samples((await response.content()).decode())
    name = "xrelay_credential_expiry_timestamp_seconds"
    assert s[(name, (("account", "sandbox"), ("credential", "certificate")))] == end
    listener = f"tcp:{world.smtp_port}:interface=127.0.0.1"
    assert s[(name, (("credential", "tls_cert"), ("listener", listener)))] == tls_end
    assert (name, (("account", "boss"), ("credential", "client_secret"))) in s

    # The account still works: the certificate is valid for ten more days.
    token = await relay.tokens.sources["sandbox"].access_token()
    assert world.sandbox.identity.check_access_token(token) is not None

    # The admin page's column.
    browser = Browser(world.admin_url)
    await browser.sign_in()
    response, body = await browser.request("GET", "/")
    assert f'<td id="credential-expiry-sandbox" class="small bad">certificate {day}</td>' in body
    tls_day = datetime.datetime.fromtimestamp(tls_end, datetime.timezone.utc).date().isoformat()
    assert (f'<p id="tls-expiry" class="small">Listener TLS certificate expires: tls cert {tls_day}</p>'
            in body), body

    # `xrelay accounts` asks the relay (its control channel runs in this process too)
    code, out, err = await xrelay(world, "accounts")
    assert (f"\n# warning: account sandbox: the certificate {world.tmp / 'app.pem'} expires "
            f"on {day} (in 10 days); upload a new certificate") in out, out + err

    code, out, err = await xrelay(world, "check-config")
    assert code == 0, err
    assert (f"# warning: account sandbox: the certificate {world.tmp / 'app.pem'} expires "
            f"on {day} (in 10 days)") in out


def test_the_daemon_warns_thirty_and_seven_days_ahead_once_each(tmp_path: Path) -> None:
    cert, _, end = certificate(tmp_path, "tls", 40)
    config: Any = type("C", (), {})()
    config.accounts = ()
    config.server = ServerConfig(listen=(ListenerConfig("tcp:25"), ListenerConfig("tcp:587")),
                                 hostname="relay.test", tls_cert=cert, tls_key=cert)
    watch = ExpiryWatch(config)
    assert [e.owner for e in credential_expiries(config)] == ["tcp:25", "tcp:587"]
    assert watch.check(end - 40 * DAY) == []
    first = watch.check(end - 29.5 * DAY)
    assert len(first) == 1 and "expires on" in first[0] and "(in 30 days)" in first[0]
    assert watch.check(end - 20 * DAY) == []
    second = watch.check(end - 6.5 * DAY)
    assert len(second) == 1 and "(in 7 days)" in second[0]
    assert watch.check(end - 1 * DAY) == []
    gone = watch.check(end + 1)
    assert len(gone) == 1 and "expired on" in gone[0]
    assert watch.check(end + DAY) == []


def test_client_secret_expires_and_health_grace_are_read(world) -> None:
    import pytest

    from xrelay.config import ConfigError
    from xrelay.configfile import read_config

    write_config(world, server_extra="health_grace = 120")
    text = world.config_path.read_text()
    world.config_path.write_text(text.replace('name = "sandbox"', 'name = "sandbox"\n'
                                              "client_secret_expires = 2027-06-30"))
    config = read_config(str(world.config_path))
    assert config.account("sandbox").client_secret_expires == "2027-06-30"
    assert config.server.health_grace == 120
    [expiry] = credential_expiries(config)
    assert (expiry.owner, expiry.credential) == ("sandbox", "client_secret")
    assert expiry.expires_at == datetime.datetime(2027, 6, 30, 23, 59, 59,
                                                  tzinfo=datetime.timezone.utc).timestamp()
    world.config_path.write_text(text.replace('name = "sandbox"', 'name = "sandbox"\n'
                                              'client_secret_expires = "June 2027"'))
    with pytest.raises(ConfigError) as e:
        read_config(str(world.config_path))
    assert str(e.value).endswith('accounts."sandbox".client_secret_expires: \'June 2027\' is '
                                 'not a date; write client_secret_expires = "2027-06-30" (the '
                                 'expiry shown in the app registration)')
