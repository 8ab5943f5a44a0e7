"""
The OpenSSL command line client as a device's TLS stack: `openssl s_client` with the
versions and suites a test asks for, its stdin a whole SMTP conversation.  Run in a
thread so the reactor keeps serving.  The client's OpenSSL configuration is a minimal
file of our own, so that a system policy (MinProtocol, CipherString) cannot decide
what the test shows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import attrs
from twisted.internet import threads

OPENSSL = shutil.which("openssl")


@attrs.frozen
class ClientRun:
    returncode: int
    output: str

    @property
    def handshake_done(self) -> bool:
        return "Cipher is (NONE)" not in self.output and "New, " in self.output


def minimal_openssl_conf(directory: Any) -> str:
    path = os.path.join(os.fspath(directory), "openssl-client.cnf")
    with open(path, "w") as f:
        f.write("# minimal: no system TLS policy for the test client\n")
    return path


def s_client(port: int, directory: Any, *options: str, stdin: bytes = b"",
             starttls: bool = True) -> "Any":
    """Run `openssl s_client` against 127.0.0.1:port; fires with a L{ClientRun}."""
    assert OPENSSL is not None
    command = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
               "localhost", "-crlf", "-ign_eof", "-nocommands", *options]
    if starttls:
        command[2:2] = ["-starttls", "smtp"]
    env = dict(os.environ, OPENSSL_CONF=minimal_openssl_conf(directory))

    def run() -> ClientRun:
        result = subprocess.run(command, input=stdin, capture_output=True, timeout=60,
                                env=env)
        text = (result.stdout + result.stderr).decode("utf-8", "replace")
        return ClientRun(result.returncode, text)

    return threads.deferToThread(run)


def conversation(sender: str = "scanner@example.com", recipient: str = "a@example.org",
                 subject: str = "scan") -> bytes:
    """EHLO again (after STARTTLS), one message, QUIT; LF line ends (-crlf adds CR)."""
    return (f"EHLO printer.lan\nMAIL FROM:<{sender}>\nRCPT TO:<{recipient}>\nDATA\n"
            f"Subject: {subject}\n\nscanned page\n.\nQUIT\n").encode()
