"""
Test support for the inbound listener: configurations built by hand, a running
L{InboundService} on a real loopback socket, and a raw SMTP client that sends exact
bytes and collects exact replies.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import attrs
from twisted.internet import defer, reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.python.filepath import FilePath

from tests.waiting import until  # noqa: F401 (the inbound tests import it from here)
from xrelay.addresses import SenderPattern
from xrelay.config import (
    AccountConfig,
    Config,
    ListenerConfig,
    RelayConfig,
    ServerConfig,
    UserConfig,
)
from xrelay.inbound import InboundService
from xrelay.inbound.testing import MemorySpool, RecordingDelivery
from xrelay.passwords import hash_password
from xrelay.sandbox.ca import CertificateAuthority

#: Cheap hashes for tests: the real cost is the point in production, not here.
SCANNER_PASSWORD = "correct horse battery staple"
SCANNER_HASH = hash_password(SCANNER_PASSWORD, log2_n=4)
ERP_PASSWORD = "erp-Passw0rd"
ERP_HASH = hash_password(ERP_PASSWORD, log2_n=4)

NOWHERE = (ipaddress.ip_network("192.0.2.0/24"),)  # TEST-NET-1: loopback is not in it


def account(name: str = "main", senders: tuple[str, ...] = ("*@example.com",)
            ) -> AccountConfig:
    return AccountConfig(
        name=name, provider="microsoft", user=f"relay@{senders[0].split('@')[-1]}"
        if "@" in senders[0] else "relay@example.com",
        flow="client_credentials", senders=tuple(SenderPattern.parse(s) for s in senders),
        tenant="example.onmicrosoft.com", client_id="client",
        # Never read: these tests do not sign in; the account needs a secret to be valid.
        client_secret_file="unused-secret.txt")


def users() -> tuple[UserConfig, ...]:
    return (
        UserConfig("scanner", SCANNER_HASH, (SenderPattern.parse("scanner@example.com"),)),
        UserConfig("erp", ERP_HASH, (SenderPattern.parse("*@example.com"),)),
    )


def make_config(tls: "Certificates | None" = None, *, listen: tuple[ListenerConfig, ...]
                | None = None, allow_networks: Any = None, with_users: bool = True,
                relay_senders: tuple[str, ...] | None = None,
                accounts: tuple[AccountConfig, ...] | None = None,
                bare_lf_end_of_data: str | None = None, **server: Any) -> Config:
    server.setdefault("hostname", "relay.test")
    if listen is None:
        listen = (ListenerConfig("tcp:0:interface=127.0.0.1"),)
    relay_kwargs: dict[str, Any] = {}
    if allow_networks is not None:
        relay_kwargs["allow_networks"] = tuple(allow_networks)
    if relay_senders is not None:
        relay_kwargs["senders"] = tuple(SenderPattern.parse(s) for s in relay_senders)
    if bare_lf_end_of_data is not None:
        relay_kwargs["bare_lf_end_of_data"] = bare_lf_end_of_data
    return Config(
        server=ServerConfig(
            listen=listen,
            tls_cert=tls.cert_file if tls else None,
            tls_key=tls.key_file if tls else None,
            state_dir="/nonexistent",
            **server),
        relay=RelayConfig(**relay_kwargs),
        users=users() if with_users else (),
        accounts=accounts if accounts is not None else (account(),),
    )


@attrs.frozen
class Certificates:
    """A CA and a server certificate for localhost/127.0.0.1/::1, made for one test."""

    ca: CertificateAuthority
    cert_file: str
    key_file: str
    ca_file: str

    @classmethod
    def make(cls, directory: str) -> "Certificates":
        ca = CertificateAuthority.create(FilePath(directory).child("ca"))
        issued = ca.issue()
        return cls(ca, issued.chain_file, issued.key_file, ca.ca_file)

    def client_options(self, hostname: str = "localhost") -> Any:
        return optionsForClientTLS(hostname, trustRoot=self.ca.trust_root())


@attrs.define
class Running:
    service: InboundService
    spool: Any
    delivery: Any
    ports: list[int]

    @property
    def port(self) -> int:
        return self.ports[0]


@defer.inlineCallbacks
def start(config: Config, spool: Any = None, delivery: Any = None, clock: Any = None,
          run_blocking: Any = None, **service_options: Any
          ):  # type: ignore[no-untyped-def]
    spool = spool if spool is not None else MemorySpool()
    delivery = delivery if delivery is not None else RecordingDelivery()
    service = InboundService(config, spool, delivery, reactor=global_reactor, clock=clock,
                             run_blocking=run_blocking, **service_options)
    service.startService()
    ports = yield service.when_listening()
    return Running(service, spool, delivery, [p.getHost().port for p in ports])


class RawClient(Protocol):
    """
    Sends exact bytes; collects complete SMTP replies (a multi-line reply is one string,
    its lines joined with "\\n").
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.replies: list[str] = []
        self.waiting: list[tuple[int, Deferred[list[str]]]] = []
        self.closed: Deferred[None] = Deferred()
        self.lines: list[str] = []

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n" in self.buffer:
            raw, self.buffer = self.buffer.split(b"\r\n", 1)
            line = raw.decode("utf-8")
            self.lines.append(line)
            if len(line) < 4 or line[3] == " ":
                self.replies.append("\n".join(self.lines))
                self.lines = []
        self._check()

    def _check(self) -> None:
        for entry in list(self.waiting):
            count, d = entry
            if len(self.replies) >= count:
                self.waiting.remove(entry)
                got, self.replies = self.replies[:count], self.replies[count:]
                d.callback(got)

    def connectionLost(self, reason: Any = None) -> None:
        for _, d in self.waiting:
            d.errback(ConnectionError(f"closed; unanswered, got {self.replies!r}"))
        self.waiting = []
        self.closed.callback(None)

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def read(self, count: int = 1, timeout: float = 10) -> "Deferred[list[str]]":
        """The next C{count} replies."""
        d: Deferred[list[str]] = Deferred()
        self.waiting.append((count, d))
        self._check()
        return d.addTimeout(timeout, global_reactor)

    @defer.inlineCallbacks
    def command(self, data: bytes):  # type: ignore[no-untyped-def]
        """Send one command (CRLF added when missing); return its one reply."""
        if not data.endswith(b"\n"):
            data += b"\r\n"
        self.send(data)
        replies = yield self.read(1)
        return replies[0]

    def start_tls(self, certificates: Certificates) -> None:
        self.transport.startTLS(certificates.client_options())

    def wait_closed(self, timeout: float = 10) -> "Deferred[None]":
        d: Deferred[None] = Deferred()
        self.closed.addCallback(lambda _: d.callback(None) if not d.called else None)
        return d.addTimeout(timeout, global_reactor)


@defer.inlineCallbacks
def connect(port: int, host: str = "127.0.0.1", greeting: bool = True,
            tls: Certificates | None = None, prefix: bytes = b"",
            source: str | None = None):  # type: ignore[no-untyped-def]
    """
    Connect a L{RawClient}; with C{greeting}, read the 220 first.  C{source} binds the
    client's end to another loopback address (127.0.0.2, ...: another client host).
    """
    endpoint_type = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
    client = RawClient()
    bind = {"bindAddress": (source, 0)} if source else {}
    yield connectProtocol(endpoint_type(global_reactor, host, port, **bind), client)
    if prefix:
        client.send(prefix)
    if tls is not None:
        client.start_tls(tls)
    if greeting:
        (client.greeting,) = yield client.read(1)
    return client


@defer.inlineCallbacks
def ehlo(client: RawClient, name: bytes = b"client.test"):  # type: ignore[no-untyped-def]
    reply = yield client.command(b"EHLO " + name)
    assert reply.startswith("250-relay.test"), reply
    return reply


def plain(user: str, password: str) -> bytes:
    import base64

    return base64.b64encode(f"\0{user}\0{password}".encode())


def stop(running: Running) -> "Deferred[None]":
    return running.service.stopService()


def inline(f: Any, *args: Any) -> "Deferred[Any]":
    """Run a blocking callable at once (the password check, with cheap test hashes)."""
    return defer.maybeDeferred(f, *args)


def certificates(tmp_path: Any) -> Certificates:
    return Certificates.make(os.fspath(tmp_path))


def only_connection(running: Running) -> Any:
    """The one live server-side protocol of this service."""
    [protocol] = list(running.service.live)
    return protocol
