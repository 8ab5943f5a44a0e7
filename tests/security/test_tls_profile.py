"""
The TLS profile of the listeners, checked with a real client (`openssl s_client
-cipher`): a default listener speaks TLS 1.2 with ECDHE key exchange and AEAD suites
only, and TLS 1.3; it refuses static-RSA key exchange, finite-field DHE, CBC suites,
and TLS 1.0/1.1.  Only a listener that asks for tls_min_version = "1.0" takes the old
suites old devices need, and that does not change its neighbour.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.inbound.harness import make_config, until
from tests.inbound.tlsclient import OPENSSL, s_client
from xrelay.config import ListenerConfig

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")

REFUSED_TLS12 = [
    "AES128-SHA",                     # static RSA, CBC
    "AES256-GCM-SHA384",              # static RSA, even with AEAD
    "ECDHE-RSA-AES128-SHA",           # ECDHE, but CBC
    "ECDHE-RSA-AES256-SHA384",        # ECDHE, CBC with SHA-2
    "DHE-RSA-AES128-GCM-SHA256",      # finite-field DHE
]
ACCEPTED_TLS12 = ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
                  "ECDHE-RSA-CHACHA20-POLY1305"]


async def start(relay, certs, legacy: bool = False):  # type: ignore[no-untyped-def]
    listen = [ListenerConfig("tcp:0:interface=127.0.0.1")]
    if legacy:
        listen.append(ListenerConfig("tcp:0:interface=127.0.0.1", tls_min_version="1.0"))
    return await relay(make_config(certs, listen=tuple(listen)))


@pytest.mark.parametrize("cipher", REFUSED_TLS12)
@pytest_twisted.ensureDeferred
async def test_default_listener_refuses_weak_tls12_suites(relay, certs, tmp_path, logged,
                                                          cipher):
    r = await start(relay, certs, legacy=True)
    run = await s_client(r.ports[0], tmp_path, "-tls1_2", "-cipher", cipher,
                         stdin=b"QUIT\n")
    assert not run.handshake_done, run.output
    await until(lambda: "TLS handshake failed" in logged.text)
    assert "no cipher suite in common" in logged.text


@pytest.mark.parametrize("cipher", ACCEPTED_TLS12)
@pytest_twisted.ensureDeferred
async def test_default_listener_accepts_ecdhe_aead(relay, certs, tmp_path, cipher):
    r = await start(relay, certs)
    run = await s_client(r.port, tmp_path, "-tls1_2", "-cipher", cipher, stdin=b"QUIT\n")
    assert f"Cipher is {cipher}" in run.output, run.output
    assert "221 2.0.0 Bye" in run.output


@pytest_twisted.ensureDeferred
async def test_default_listener_speaks_tls13(relay, certs, tmp_path):
    r = await start(relay, certs)
    run = await s_client(r.port, tmp_path, "-tls1_3", stdin=b"QUIT\n")
    assert "New, TLSv1.3, Cipher is TLS_" in run.output, run.output


@pytest.mark.parametrize("version", ["-tls1", "-tls1_1"])
@pytest_twisted.ensureDeferred
async def test_default_listener_refuses_old_versions(relay, certs, tmp_path, version):
    r = await start(relay, certs, legacy=True)
    run = await s_client(r.ports[0], tmp_path, version, "-cipher", "DEFAULT@SECLEVEL=0",
                         stdin=b"QUIT\n")
    assert not run.handshake_done and "alert protocol version" in run.output, run.output


@pytest.mark.parametrize("version,cipher", [("-tls1", "AES128-SHA"),
                                            ("-tls1_1", "ECDHE-RSA-AES128-SHA"),
                                            ("-tls1_2", "AES128-SHA")])
@pytest_twisted.ensureDeferred
async def test_legacy_listener_takes_old_suites(relay, certs, tmp_path, version, cipher):
    r = await start(relay, certs, legacy=True)
    run = await s_client(r.ports[1], tmp_path, version, "-cipher",
                         f"{cipher}@SECLEVEL=0", stdin=b"QUIT\n")
    assert f"Cipher is {cipher}" in run.output, run.output


@pytest_twisted.ensureDeferred
async def test_tls13_only_listener_refuses_tls12_and_says_why(relay, certs, tmp_path,
                                                              logged):
    r = await relay(make_config(certs, listen=(
        ListenerConfig("tcp:0:interface=127.0.0.1", tls_min_version="1.3"),)))
    run = await s_client(r.port, tmp_path, "-tls1_2", stdin=b"QUIT\n")
    assert not run.handshake_done, run.output
    await until(lambda: "TLS handshake failed" in logged.text)
    assert ("client offered TLS 1.2 at most; this listener's tls_min_version is 1.3"
            in logged.text)
    run = await s_client(r.port, tmp_path, "-tls1_3", stdin=b"QUIT\n")
    assert "New, TLSv1.3" in run.output
