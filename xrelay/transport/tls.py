"""
Client TLS for the upstream connections (SMTP and Graph): the certificate must chain to
a trusted root and name the host we meant to reach.

Trust is the platform's roots plus certifi's bundle (so a minimal container without CA
certificates still reaches Microsoft and Google) plus the account's C{ca_file} (the
sandbox CA, or a company's TLS-inspecting proxy).  This module must never offer a way to
turn verification off: the token travels over these connections.
"""

from __future__ import annotations

import certifi
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.web.client import BrowserLikePolicyForHTTPS

import attrs

from xrelay.twistedapi import TrustRoot


@attrs.frozen
class UpstreamTrust(TrustRoot):
    """
    The roots an upstream certificate may chain to.

    @ivar ca_file: extra PEM certificates (C{AccountConfig.ca_file}), or C{None}.
    """

    ca_file: str | None = None
    system: bool = True

    def add_roots(self, context: SSL.Context) -> None:
        if self.system:
            context.set_default_verify_paths()
            context.load_verify_locations(certifi.where())
        if self.ca_file is not None:
            context.load_verify_locations(self.ca_file)


def client_tls(hostname: str, ca_file: str | None = None) -> IOpenSSLClientConnectionCreator:
    """Options for a TLS client connection to C{hostname}, verifying name and chain."""
    return ssl.optionsForClientTLS(hostname, trustRoot=UpstreamTrust(ca_file))


def https_policy(ca_file: str | None = None) -> BrowserLikePolicyForHTTPS:
    """The same trust for treq's Agent (Graph)."""
    return BrowserLikePolicyForHTTPS(trustRoot=UpstreamTrust(ca_file))
