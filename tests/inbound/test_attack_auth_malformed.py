"""
AUTH with no mechanism, an unknown one, malformed base64 and malformed PLAIN
responses: precise 501/504 replies, no traceback, the connection stays usable.
"""

from __future__ import annotations

import base64

import pytest
import pytest_twisted

from tests.inbound.harness import ERP_PASSWORD, connect, ehlo, inline, make_config, plain

SYNTAX = "501 5.5.2 Syntax: AUTH mechanism [initial-response]"
UNDECODABLE = "501 5.5.2 Cannot decode AUTH response"


async def session(relay):  # type: ignore[no-untyped-def]
    r = await relay(make_config(require_tls_for_auth=False), run_blocking=inline)
    client = await connect(r.port)
    await ehlo(client)
    return r, client


@pytest.mark.parametrize("line, reply", [
    (b"AUTH", SYNTAX),
    (b"AUTH ", SYNTAX),
    (b"AUTH CRAM-MD5", "504 5.5.4 Unrecognised authentication mechanism; use PLAIN or LOGIN"),
    (b"AUTH XOAUTH2 dXNlcj0=", "504 5.5.4 Unrecognised authentication mechanism; use "
     "PLAIN or LOGIN"),
    (b"AUTH PLAIN !!!notbase64", UNDECODABLE),
    (b"AUTH PLAIN AGVycAB4e", UNDECODABLE),  # bad padding
    (b"AUTH PLAIN " + base64.b64encode(b"erp\x00only-two"), UNDECODABLE),
    (b"AUTH PLAIN " + base64.b64encode(b"a\x00b\x00c\x00d"), UNDECODABLE),
    (b"AUTH PLAIN " + base64.b64encode(b"\x00erp\x00\xff\xfe"), UNDECODABLE),
    (b"AUTH PLAIN " + base64.b64encode(b"boss\x00erp\x00" + ERP_PASSWORD.encode()),
     UNDECODABLE),
    (b"AUTH LOGIN ####", UNDECODABLE),
])
@pytest_twisted.ensureDeferred
async def test_malformed_auth_command(relay, line, reply):
    r, client = await session(relay)
    assert (await client.command(line)) == reply
    assert (await client.command(b"NOOP")) == "250 2.0.0 Ok"
    # Not counted as a password guess, and nobody got in.
    assert r.service.auth_failures.delay("127.0.0.1", r.service.clock.seconds()) == 0
    assert (await client.command(b"AUTH PLAIN " + plain("erp", ERP_PASSWORD))) == (
        "235 2.7.0 Authentication successful")


@pytest.mark.parametrize("mechanism, response, reply", [
    (b"PLAIN", b"%%%", UNDECODABLE),
    (b"PLAIN", b"*", "501 5.7.0 Authentication cancelled"),
    (b"LOGIN", b"*", "501 5.7.0 Authentication cancelled"),
    (b"LOGIN", b"not base64!", UNDECODABLE),
    (b"LOGIN", b"\xff\xfe", UNDECODABLE),
])
@pytest_twisted.ensureDeferred
async def test_malformed_sasl_response(relay, mechanism, response, reply):
    r, client = await session(relay)
    assert (await client.command(b"AUTH " + mechanism)).startswith("334 ")
    assert (await client.command(response)) == reply
    # Back in command mode.
    assert (await client.command(b"NOOP")) == "250 2.0.0 Ok"


@pytest_twisted.ensureDeferred
async def test_malformed_password_response_after_login_user(relay):
    r, client = await session(relay)
    await client.command(b"AUTH LOGIN")
    assert (await client.command(base64.b64encode(b"erp"))) == "334 UGFzc3dvcmQ6"
    assert (await client.command(b"=bad=")) == UNDECODABLE
    assert (await client.command(b"NOOP")) == "250 2.0.0 Ok"
