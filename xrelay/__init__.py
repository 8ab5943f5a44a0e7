"""
xrelay: an SMTP relay for the LAN that delivers to Exchange Online and Gmail with OAuth 2.0.

The embedding API, one front door for each name (see docs/embedding.md): build the
relay with L{makeService} from a configuration (L{read_config}); bring your own spool
(L{ISpool}), token sources (L{ITokenSource}), inbound rules (L{IInboundHandler},
usually a L{PolicyHandler} subclass answering with L{Refusal}s about an
L{InboundSession}) and event sink (L{IRelayEvents}).  Test doubles are in
L{xrelay.testing}.

Importing this package must stay cheap and must not import C{twisted.mail} (which
installs a reactor): the twistd plugin imports it to describe itself.  So the names
below are looked up in their own modules on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: name -> the module it lives in.
_HOMES = {
    "makeService": "xrelay.service",
    "RelayService": "xrelay.service",
    "read_config": "xrelay.configfile",
    "Config": "xrelay.config",
    "ConfigError": "xrelay.config",
    "PolicyHandler": "xrelay.inbound.handler",
    "InboundSession": "xrelay.records",
    "Refusal": "xrelay.records",
    "SpoolEntry": "xrelay.records",
    "TokenStatus": "xrelay.records",
    "Envelope": "xrelay.envelope",
    "IDelivery": "xrelay.interfaces",
    "IInboundHandler": "xrelay.interfaces",
    "IIncomingMessage": "xrelay.interfaces",
    "IMessageHistory": "xrelay.interfaces",
    "IQueueControl": "xrelay.interfaces",
    "IRelayEvents": "xrelay.interfaces",
    "ISpool": "xrelay.interfaces",
    "ISpoolEntry": "xrelay.interfaces",
    "ITokenSource": "xrelay.interfaces",
    "ITransport": "xrelay.interfaces",
    "SpoolFull": "xrelay.interfaces",
}

__all__ = [
    "Config", "ConfigError", "Envelope", "IDelivery", "IInboundHandler", "IIncomingMessage",
    "IMessageHistory", "IQueueControl", "IRelayEvents", "ISpool", "ISpoolEntry",
    "ITokenSource", "ITransport", "InboundSession", "PolicyHandler", "Refusal",
    "RelayService", "SpoolEntry", "SpoolFull", "TokenStatus", "makeService", "read_config",
]

if TYPE_CHECKING:
    from xrelay.config import Config, ConfigError
    from xrelay.configfile import read_config
    from xrelay.envelope import Envelope
    from xrelay.inbound.handler import PolicyHandler
    from xrelay.interfaces import (IDelivery, IInboundHandler, IIncomingMessage,
                                   IMessageHistory, IQueueControl, IRelayEvents, ISpool,
                                   ISpoolEntry, ITokenSource, ITransport, SpoolFull)
    from xrelay.records import InboundSession, Refusal, SpoolEntry, TokenStatus
    from xrelay.service import RelayService, makeService


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'xrelay' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
