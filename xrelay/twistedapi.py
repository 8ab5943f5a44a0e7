"""
The private Twisted APIs xrelay relies on, each behind one adapter.

Twisted has no public name for these yet, so xrelay imports them here and nowhere else:

  - C{twisted.protocols.haproxy._wrapper}: L{HAProxyProtocolWrapper} and
    L{HAProxyWrappingFactory} (the public C{proxyEndpoint} wraps an endpoint, but a
    C{haproxy:} listener must refuse untrusted proxies before the header is read, so
    xrelay subclasses the wrapper), and the wrapper's private C{_proxyInfo}, read only
    through L{proxy_header_read}.
  - C{twisted.internet._sslverify.IOpenSSLTrustRoot} (the interface a C{trustRoot} for
    C{optionsForClientTLS} must provide; its one method is private too), behind
    L{TrustRoot}.

C{tests/test_twistedapi.py} checks each of them against the installed Twisted and fails
naming the API that changed; C{setup.cfg} bounds Twisted below the next major version.
This module must never grow logic of its own: it only names and adapts.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory
from zope.interface import implementer

__all__ = ["HAProxyProtocolWrapper", "HAProxyWrappingFactory", "IOpenSSLTrustRoot",
           "TrustRoot", "proxy_header_read"]


def proxy_header_read(wrapper: HAProxyProtocolWrapper) -> bool:
    """Whether C{wrapper} has read the whole PROXY header (so C{getPeer()} is the
    client behind the proxy); Twisted keeps that only in the private C{_proxyInfo}."""
    info: Any = wrapper._proxyInfo
    return info is not None


@implementer(IOpenSSLTrustRoot)
class TrustRoot:
    """
    A C{trustRoot} for C{twisted.internet.ssl.optionsForClientTLS}: a subclass loads
    its roots in L{add_roots}; Twisted calls the interface's private
    C{_addCACertsToContext}, which only this class defines.
    """

    def add_roots(self, context: SSL.Context) -> None:
        """Load the certificates a peer may chain to into C{context}."""
        raise NotImplementedError(f"{type(self).__name__} must define add_roots")

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        self.add_roots(context)
