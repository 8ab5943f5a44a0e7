"""
The devices of the inventory tests, as real clients on loopback against a real relay
(C{makeService}, delivering into the sandbox): a trusted printer at 127.0.0.2, a
scanner outside C{allow_networks} at 127.0.0.3, a device that logs in as C{scanner}
from 127.0.0.4 with a wrong then the right password (over STARTTLS), and a TLS 1.0
device (C{openssl s_client -tls1}, from 127.0.0.1) on a default listener.
"""

from __future__ import annotations

import json
import os
import smtplib
import ssl
import subprocess
import time
from typing import Any, Awaitable, Callable

from twisted.internet.threads import deferToThread

from tests.admin.conftest import RelayWorld, write_config
from tests.conftest import bin_path
from tests.inbound.harness import Certificates
from tests.inbound.tlsclient import conversation, s_client
from xrelay.passwords import hash_password

SCANNER_PASSWORD = "scanner password 1234"
TRUSTED, OUTSIDE, AUTHENTICATING = "127.0.0.2", "127.0.0.3", "127.0.0.4"
MESSAGE = b"Subject: scan\r\n\r\nscanned page\r\n"


def configure(world: RelayWorld, extra_relay: str = "") -> Certificates:
    """The relay of these tests: only 127.0.0.2 trusted, one AUTH user, STARTTLS."""
    certs = Certificates.make(str(world.tmp / "certs"))
    write_config(world, server_extra=(
        f'tls_cert = "{certs.cert_file}"\ntls_key = "{certs.key_file}"'), sections=f"""
[relay]
allow_networks = ["{TRUSTED}/32"]
{extra_relay}

[[users]]
name = "scanner"
password_hash = "{hash_password(SCANNER_PASSWORD, log2_n=4)}"
senders = ["scanner@example.com"]
""")
    return certs


def _smtp(port: int, source: str, helo: str) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0))
    client.ehlo(helo)
    return client


def send_from(port: int, source: str, helo: str, sender: str) -> Any:
    """One message from this address; fires with smtplib's error, or None when sent."""
    def send() -> Any:
        with _smtp(port, source, helo) as client:
            try:
                client.sendmail(sender, ["customer@example.net"], MESSAGE)
            except smtplib.SMTPException as e:
                return e
        return None
    return deferToThread(send)


def log_in_wrong_then_right(port: int, certs: Certificates) -> Any:
    """AUTH as scanner with a wrong password (535), then the right one, and send."""
    def run() -> tuple[Any, Any]:
        context = ssl.create_default_context(cafile=certs.ca_file)
        with _smtp(port, AUTHENTICATING, "mfp-4.lan") as client:
            client.starttls(context=context)
            client.ehlo("mfp-4.lan")
            # One mechanism each time (login() would try every one offered).
            client.user, client.password = "scanner", "not the password"
            try:
                client.auth("PLAIN", client.auth_plain)
                wrong = None
            except smtplib.SMTPAuthenticationError as e:
                wrong = e
            client.password = SCANNER_PASSWORD
            client.auth("PLAIN", client.auth_plain)
            return wrong, client.sendmail("scanner@example.com", ["customer@example.net"],
                                          MESSAGE)
    return deferToThread(run)


def tls1_device(port: int, directory: Any) -> Any:
    """A device that speaks only TLS 1.0, against a default listener."""
    return s_client(port, directory, "-tls1", "-cipher", "DEFAULT@SECLEVEL=0",
                    stdin=conversation())


def devices_json(world: RelayWorld, *options: str) -> Any:
    """`xrelay devices --json` as a subprocess (in a thread): the parsed rows."""
    return xrelay_json(world, "devices", "--json", *options)


def xrelay_json(world: RelayWorld, *arguments: str) -> Any:
    """The `xrelay` command as a subprocess (in a thread): its parsed JSON output."""
    def run() -> Any:
        env = dict(os.environ, XRELAY_CONFIG=str(world.config_path))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(),
                                                          env.get("PYTHONPATH")]))
        result = subprocess.run([bin_path("xrelay"), *arguments],
                                capture_output=True, timeout=120, env=env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)
    return deferToThread(run)


async def eventually(condition: Callable[[], Awaitable[bool]],
                     timeout: float = 60.0) -> None:
    """Wait (polling, a quarter second apart) until an asynchronous check holds."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "the state waited for did not come"
        await deferLater(reactor, 0.25, lambda: None)


def by_device(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(row["address"], row["user"]): row for row in rows}


__all__ = ["AUTHENTICATING", "OUTSIDE", "TRUSTED", "by_device", "configure",
           "devices_json", "eventually", "log_in_wrong_then_right", "send_from", "tls1_device",
           "xrelay_json"]
