"""Sandbox lifecycle: synchronous start, stop closing open connections, files on disk."""

from __future__ import annotations

import os
import socket
import stat
import ssl

import pytest_twisted
from twisted.application.service import MultiService
from twisted.internet import threads
from twisted.python.filepath import FilePath

from xrelay.sandbox import DEFAULT_MAILBOX, Sandbox, SandboxService

from .conftest import app_token, xoauth2


@pytest_twisted.inlineCallbacks
def test_service_starts_synchronously_and_stop_closes_open_connections(tmp_path):
    sb = Sandbox(FilePath(str(tmp_path)))
    parent = MultiService()
    SandboxService(sb).setServiceParent(parent)
    parent.startService()
    account = sb.default_account()
    assert account["smtp_port"] == sb.smtp_port > 0
    assert account["authority"] == f"https://127.0.0.1:{sb.identity_port}"
    secret_file = FilePath(account["client_secret_file"])
    assert stat.S_IMODE(os.stat(account["client_secret_file"]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(sb.server_certificate.key_file).st_mode) == 0o600
    assert secret_file.getContent().strip().decode() == sb.default_app.client_secret

    def connect():
        idle = socket.create_connection(("127.0.0.1", sb.smtp_port), timeout=5)
        return idle, idle.recv(1024)

    def after_stop(idle):
        try:
            return idle.recv(1024)
        except ConnectionResetError:
            return b""
        finally:
            idle.close()

    idle, banner = yield threads.deferToThread(connect)
    assert banner.startswith(b"220 ")
    yield parent.stopService()
    assert (yield threads.deferToThread(after_stop, idle)) == b""  # closed by stop()


@pytest_twisted.inlineCallbacks
def test_bdat_chunks_are_assembled(sandbox: Sandbox):
    token = app_token(sandbox)

    def talk():
        sock = socket.create_connection(("127.0.0.1", sandbox.smtp_port), timeout=10)
        f = sock.makefile("rb")
        f.readline()
        sock.sendall(b"EHLO x\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        sock.sendall(b"STARTTLS\r\n")
        f.readline()
        tls = ssl.create_default_context(cafile=sandbox.ca_file).wrap_socket(sock, server_hostname="localhost")
        g = tls.makefile("rb")
        tls.sendall(b"EHLO x\r\n")
        while not g.readline().startswith(b"250 "):
            pass
        tls.sendall(f"AUTH XOAUTH2 {xoauth2(DEFAULT_MAILBOX, token)}\r\n".encode())
        g.readline()
        tls.sendall(b"MAIL FROM:<a@example.com> BODY=BINARYMIME\r\nRCPT TO:<b@example.com>\r\n")
        g.readline(), g.readline()
        tls.sendall(b"BDAT 10\r\nSubject: x")
        first = g.readline()
        tls.sendall(b"BDAT 9 LAST\r\n\r\n\r\n.body")
        last = g.readline()
        tls.close()
        return first, last

    first, last = yield threads.deferToThread(talk)
    assert first == b"250 2.0.0 10 bytes received\r\n"
    assert last.startswith(b"250 2.6.0 ")
    assert sandbox.mailbox.messages[0].data == b"Subject: x\r\n\r\n.body"
