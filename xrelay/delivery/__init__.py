"""
The delivery stage: from the spool to the upstream accounts.

L{DeliveryEngine} is the service; L{scheduler}, L{retry}, L{bounce} and L{rewrite} are
its pure parts; L{testing} holds a scriptable transport for tests.
"""

from xrelay.delivery.engine import DeliveryEngine, EngineStatus
from xrelay.records import OutcomeRecord

__all__ = ["DeliveryEngine", "EngineStatus", "OutcomeRecord"]
