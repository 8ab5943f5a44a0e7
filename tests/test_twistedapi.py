"""
The private Twisted APIs xrelay relies on (L{xrelay.twistedapi}) still exist in the
installed Twisted and behave as xrelay uses them.  Each failure names the API, so an
upgrade that breaks one says which adapter to mend (and why C{setup.cfg} bounds Twisted).
"""

from __future__ import annotations

import importlib

import pytest
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory

from xrelay import twistedapi
from xrelay.transport.tls import UpstreamTrust


@pytest.mark.parametrize("module, names", [
    ("twisted.protocols.haproxy._wrapper", ["HAProxyProtocolWrapper",
                                            "HAProxyWrappingFactory"]),
    ("twisted.internet._sslverify", ["IOpenSSLTrustRoot"]),
])
def test_private_modules_still_provide_the_names(module: str, names: list[str]) -> None:
    try:
        loaded = importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - only when Twisted changed
        pytest.fail(f"private Twisted module {module} is gone ({e}): mend xrelay/twistedapi.py")
    for name in names:
        assert hasattr(loaded, name), (
            f"private Twisted API {module}.{name} is gone: mend xrelay/twistedapi.py")


@pytest.mark.parametrize("name", ["makeConnection", "dataReceived", "connectionLost",
                                  "getPeer"])
def test_haproxy_wrapper_has_the_methods_xrelay_overrides(name: str) -> None:
    assert callable(getattr(twistedapi.HAProxyProtocolWrapper, name, None)), (
        f"twisted.protocols.haproxy._wrapper.HAProxyProtocolWrapper.{name} is gone: "
        "xrelay/inbound/service.py's _ProxyHeaderWrapper overrides it")


def test_haproxy_factory_builds_the_wrapper_from_its_protocol_attribute() -> None:
    assert twistedapi.HAProxyWrappingFactory.protocol is twistedapi.HAProxyProtocolWrapper, (
        "twisted.protocols.haproxy._wrapper.HAProxyWrappingFactory.protocol is no longer "
        "the wrapper class: xrelay/inbound/service.py sets it to its own subclass")


class _Recorder(Protocol):
    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def _connected_wrapper() -> tuple[twistedapi.HAProxyProtocolWrapper, _Recorder]:
    factory = twistedapi.HAProxyWrappingFactory(Factory.forProtocol(_Recorder))
    wrapper = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert isinstance(wrapper, twistedapi.HAProxyProtocolWrapper)
    wrapper.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1",
                                                                   40000)))
    inner = wrapper.wrappedProtocol
    assert isinstance(inner, _Recorder)
    return wrapper, inner


def test_a_proxy_v1_header_through_the_real_wrapper_yields_the_client_address() -> None:
    wrapper, inner = _connected_wrapper()
    assert not twistedapi.proxy_header_read(wrapper), (
        "HAProxyProtocolWrapper._proxyInfo is not None before any header: "
        "xrelay.twistedapi.proxy_header_read must be mended")
    wrapper.dataReceived(b"PROXY TCP4 192.0.2.7 ")
    assert not twistedapi.proxy_header_read(wrapper)
    wrapper.dataReceived(b"198.51.100.1 51000 25\r\nEHLO printer\r\n")
    assert twistedapi.proxy_header_read(wrapper), (
        "HAProxyProtocolWrapper._proxyInfo stays None after a whole PROXY v1 header: "
        "xrelay.twistedapi.proxy_header_read must be mended")
    peer = wrapper.getPeer()
    assert (getattr(peer, "host", None), getattr(peer, "port", None)) == ("192.0.2.7", 51000)
    assert inner.received == b"EHLO printer\r\n"


def test_a_bad_proxy_header_closes_the_connection_and_reads_no_address() -> None:
    wrapper, inner = _connected_wrapper()
    wrapper.dataReceived(b"EHLO not-a-proxy\r\n")
    assert not twistedapi.proxy_header_read(wrapper)
    transport = wrapper.transport
    assert isinstance(transport, StringTransport) and transport.disconnecting
    assert inner.received == b""


def test_the_trust_root_interface_still_has_the_method_twisted_calls() -> None:
    names = list(twistedapi.IOpenSSLTrustRoot.names())
    assert names == ["_addCACertsToContext"], (
        "twisted.internet._sslverify.IOpenSSLTrustRoot now has methods "
        f"{names}: mend xrelay.twistedapi.TrustRoot")
    assert twistedapi.IOpenSSLTrustRoot.implementedBy(UpstreamTrust)


def test_optionsForClientTLS_loads_the_roots_through_the_adapter() -> None:
    loaded: list[SSL.Context] = []

    class Recording(twistedapi.TrustRoot):
        def add_roots(self, context: SSL.Context) -> None:
            loaded.append(context)

    options = ssl.optionsForClientTLS("relay.example", trustRoot=Recording())
    # Connecting the real TLS protocol builds the context (and sends a ClientHello).
    tls = TLSMemoryBIOFactory(options, True, Factory.forProtocol(Protocol)).buildProtocol(
        IPv4Address("TCP", "127.0.0.1", 25))
    tls.makeConnection(StringTransport())
    assert len(loaded) == 1 and isinstance(loaded[0], SSL.Context), (
        "optionsForClientTLS no longer calls IOpenSSLTrustRoot._addCACertsToContext: "
        "mend xrelay.twistedapi.TrustRoot (upstream TLS would trust nothing)")


def test_a_trust_root_without_roots_says_what_is_missing() -> None:
    with pytest.raises(NotImplementedError, match="add_roots"):
        twistedapi.TrustRoot().add_roots(SSL.Context(SSL.TLS_METHOD))
