"""
Design choice, documented: a trusted host that forwards content written by others (a web
form, an old MTA that does not normalise bare LF) let an outsider inject a whole second
message through the bare-LF leniency (SEC Consult's tools reported success from a
trusted address).  Such a host belongs on a listener with C{bare_lf_end_of_data =
"never"}; C{xrelay check-config} and the README say so where the leniency is described.
"""

from __future__ import annotations

import pytest_twisted

from tests.inbound.harness import connect, ehlo, make_config
from xrelay.config import ListenerConfig, read_config

#: What a visitor types into the web form: the end of the message, then a second one.
SMUGGLED = (b"Hello\n.\nMAIL FROM:<ceo@example.com>\r\nRCPT TO:<victim@example.org>\r\n"
            b"DATA\r\nFrom: ceo@example.com\r\n\r\nwire the money\r\n")


async def send_form(port: int) -> tuple[list[str], str]:  # type: ignore[no-untyped-def]
    client = await connect(port)  # 127.0.0.1: in allow_networks, a trusted host
    await ehlo(client)
    assert (await client.command(b"MAIL FROM:<web@example.com>")) == "250 2.1.0 Ok"
    assert (await client.command(b"RCPT TO:<sales@example.org>")) == "250 2.1.5 Ok"
    assert (await client.command(b"DATA")).startswith("354")
    client.send(b"Subject: contact form\r\n\r\n" + SMUGGLED + b".\r\n")
    replies = await client.read(1)
    return replies, replies[0]


@pytest_twisted.ensureDeferred
async def test_a_never_listener_keeps_a_forwarded_message_whole(relay):
    config = make_config(listen=(
        ListenerConfig("tcp:0:interface=127.0.0.1", bare_lf_end_of_data="never"),))
    r = await relay(config)
    _, reply = await send_form(r.port)
    assert reply.startswith("250 2.0.0 Ok: queued as ")
    [(envelope, data)] = r.spool.messages()
    assert envelope.recipients == ("sales@example.org",)
    assert b"MAIL FROM:<ceo@example.com>" in data and b"wire the money" in data


@pytest_twisted.ensureDeferred
async def test_the_trusted_default_is_what_the_listener_setting_is_for(relay):
    r = await relay(make_config())  # relay.bare_lf_end_of_data = "trusted"
    replies, reply = await send_form(r.port)
    # LF.LF ended the form's message: the rest was read as commands (a second message
    # from a trusted address), which is why the forwarding host needs "never".
    assert reply.startswith("250 2.0.0 Ok: queued as ")
    [(first, form), (second, smuggled)] = r.spool.messages()
    assert b"wire the money" not in form
    assert (second.sender, second.recipients) == ("ceo@example.com", ("victim@example.org",))
    assert b"wire the money" in smuggled


def test_the_listener_key_is_read_and_check_config_gives_the_advice(folder):
    from xrelay.cli import describe

    path = folder / "xrelay.toml"
    text = path.read_text()
    assert "listen = " in text
    config = read_config(str(path))
    advice = [line for line in describe(config) if line.startswith("bare_lf_end_of_data")]
    assert advice == ['bare_lf_end_of_data = "trusted"  # a "." line with bare LF ends '
                      "DATA for allow_networks: a host there that forwards content others "
                      "wrote (a web form, an old MTA) belongs on a listener with "
                      'bare_lf_end_of_data = "never"']
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("listen = "))
    lines[i] = ('listen = ["tcp:2525", { endpoint = "tcp:2526", '
                'bare_lf_end_of_data = "never" }]')
    path.write_text("\n".join(lines) + "\n")
    config = read_config(str(path))
    assert [listener.bare_lf_end_of_data for listener in config.server.listen] == [
        None, "never"]
    [listen] = [line for line in describe(config) if line.startswith("listen = ")]
    assert listen.endswith('{ endpoint = "tcp:2526", implicit_tls = false, pass_through '
                           '= false, auth_without_tls = "never", bare_lf_end_of_data = "never" }]')
