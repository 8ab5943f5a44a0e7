"""
The TLS each listener speaks, and what a failed handshake is told in the log.

Two profiles.  The modern one, for every listener by default: TLS 1.2 with ECDHE key
exchange and AEAD suites only (AES-GCM, ChaCha20-Poly1305), and TLS 1.3; no static-RSA
key exchange, no CBC.  The legacy one, only for a listener whose C{tls_min_version} is
"1.0" or "1.1": multifunction printers sold before about 2018 speak nothing newer, and
need SHA-1 and non-ECDHE suites, so that listener's OpenSSL security level is lowered
to 0 (C{DEFAULT:@SECLEVEL=0}).  Exchange Online refuses those devices (C{421 4.7.66}),
so a relay that accepts them on the inside is the only fix that needs no Microsoft
setting; the lowered level stays on that listener, and C{xrelay check-config} warns
about it.

A device whose handshake fails usually shows nothing useful on its panel, so every
failed handshake is logged once per connection with the client and the reason in
words ("client offered only TLS 1.0; this listener's tls_min_version is 1.2").

This module must never lower the profile of a listener that did not ask for it, nor
log anything of the TLS session's secrets.
"""

from __future__ import annotations

from typing import Any

import attrs
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from xrelay.config import Config, ListenerConfig, listener_tls_min_version

__all__ = ["ListenerTLS", "listener_tls", "handshake_failure", "report_failed_handshake",
           "MODERN_CIPHERS", "LEGACY_CIPHERS"]

log = Logger()

#: TLS 1.2 suites of the modern profile (TLS 1.3 suites are all AEAD already).
MODERN_CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!PSK:!SRP"
#: The legacy profile: OpenSSL's default suites at security level 0 (SHA-1 MACs and
#: signatures, static-RSA key exchange), as old devices need.
LEGACY_CIPHERS = b"DEFAULT:@SECLEVEL=0"

_VERSIONS = {"1.0": SSL.TLS1_VERSION, "1.1": SSL.TLS1_1_VERSION,
             "1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
_NAMES = {"SSLv3": "SSL 3.0", "TLSv1": "TLS 1.0", "TLSv1.1": "TLS 1.1",
          "TLSv1.2": "TLS 1.2", "TLSv1.3": "TLS 1.3"}


@implementer(IOpenSSLServerConnectionCreator)
@attrs.define
class ListenerTLS:
    """
    The server side TLS of one listener: one OpenSSL context (certificate, versions,
    suites), a connection per client.
    """

    context: SSL.Context = attrs.field(repr=False)
    min_version: str
    legacy: bool

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self.context, None)

    def getContext(self) -> SSL.Context:
        """For callers that still want the old context-factory interface."""
        return self.context


def listener_tls(config: Config, listener: ListenerConfig | None = None
                 ) -> ListenerTLS | None:
    """
    The TLS of a listener from C{server.tls_cert} (leaf first, then its chain) and
    C{server.tls_key}, at the listener's C{tls_min_version} (the server's when the
    listener has none, or when no listener is named); C{None} without a certificate.
    """
    server = config.server
    if server.tls_cert is None or server.tls_key is None:
        return None
    version = (listener_tls_min_version(server, listener) if listener is not None
               else server.tls_min_version)
    legacy = version in ("1.0", "1.1")
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(_VERSIONS[version])
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
                        | SSL.OP_NO_RENEGOTIATION)
    context.set_cipher_list(LEGACY_CIPHERS if legacy else MODERN_CIPHERS)
    context.use_certificate_chain_file(server.tls_cert)
    context.use_privatekey_file(server.tls_key)
    context.check_privatekey()
    return ListenerTLS(context, version, legacy)


def _openssl_reasons(error: BaseException) -> list[str]:
    """The reason strings of an L{SSL.Error} (its args hold (lib, func, reason) tuples)."""
    queue = error.args[0] if error.args and isinstance(error.args[0], list) else None
    if queue is None:
        return [str(error)]
    return [str(entry[-1]) for entry in queue if isinstance(entry, tuple) and entry[-1]]


def handshake_failure(transport: Any, reason: Failure | None, min_version: str
                      ) -> str | None:
    """
    Why the TLS handshake on this connection failed, in words for the log; C{None}
    when TLS never started here or the handshake completed.
    """
    try:
        connection = transport.getHandle()
    except Exception:
        return None
    if not isinstance(connection, SSL.Connection):
        return None
    if connection.get_peer_finished() is not None:
        return None  # the client's Finished arrived: the handshake completed
    if reason is None or not isinstance(reason.value, SSL.Error):
        return ("the client closed the connection during the TLS handshake (devices do "
                "this when they do not trust the certificate or share no TLS version "
                "with the listener)")
    joined = "; ".join(_openssl_reasons(reason.value)) or "unknown OpenSSL error"
    if "unsupported protocol" in joined:
        offered = _NAMES.get(connection.get_protocol_version_name(), "an older version")
        only = f"only {offered}" if offered in ("SSL 3.0", "TLS 1.0") else (
            f"{offered} at most")
        return (f"client offered {only}; this listener's tls_min_version is "
                f"{min_version} (set tls_min_version = \"1.0\" on a listener for old "
                "devices)")
    if "no shared cipher" in joined:
        return (f"no cipher suite in common: the client offered none of this listener's "
                f"(tls_min_version {min_version}: TLS 1.2 allows ECDHE with AES-GCM or "
                "ChaCha20 only); an old device needs a listener with tls_min_version = "
                "\"1.0\"")
    if any(word in joined for word in ("wrong version number", "http request",
                                       "unknown protocol", "packet length too long",
                                       "record layer failure")):
        return f"the client did not speak TLS ({joined})"
    if "alert" in joined and any(word in joined for word in (
            "unknown ca", "bad certificate", "certificate unknown", "decrypt error",
            "certificate expired")):
        return (f"the client refused this relay's certificate ({joined}); give the device "
                "the certificate (or its CA) to trust, see `xrelay make-cert`")
    return joined


def report_failed_handshake(protocol: Any, reason: Failure | None) -> None:
    """
    Log, for an inbound connection that is closing, why its TLS handshake failed (if
    it did): the client, the listener and the reason in words.
    """
    listener = protocol.factory.listener
    minimum = listener_tls_min_version(protocol.config.server, listener)
    try:
        why = handshake_failure(protocol.transport, reason, minimum)
    except Exception:
        log.failure("inbound: cannot read why a TLS handshake failed")
        why = "(the reason could not be read)"
    if why is None:
        return
    client = protocol.client_address or getattr(protocol.transport.getPeer(), "host", "?")
    log.warn("inbound client {client} on {listener}: TLS handshake failed: {why}",
             client=client, listener=listener.endpoint, why=why)
    devices = getattr(protocol.factory, "devices", None)
    if devices is not None:
        devices.tls_failed(protocol, why)
