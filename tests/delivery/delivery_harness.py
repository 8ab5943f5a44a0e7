"""
A delivery engine on a task.Clock over a real spool (blocking work run inline) with
scripted transports: every transition is deterministic and visible on disk.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import task

from xrelay.addresses import SenderPattern
from xrelay.config import AccountConfig, Config, DeliveryConfig, ServerConfig
from xrelay.delivery import DeliveryEngine
from xrelay.delivery.testing import ScriptedTransport
from xrelay.envelope import Envelope
from xrelay.spool import Spool, run_inline
from xrelay.testing import MemorySpool

START = 1_700_000_000.0

MESSAGE = (b"From: Scanner <scanner@example.com>\r\nTo: a@example.org\r\n"
           b"Subject: Scan 42\r\nMessage-ID: <42@scanner>\r\n\r\nsecret body\r\n")


def account(name: str = "main", senders: str = "*@example.com", **kw) -> AccountConfig:
    defaults = dict(provider="microsoft", user=f"relay-{name}@example.com",
                    flow="client_credentials", tenant="example.onmicrosoft.com",
                    client_id="cid", client_secret_file="unused-secret.txt",  # never read
                    messages_per_minute=0, recipients_per_day=0,
                    smtp_host="smtp.office365.com")
    defaults.update(kw)
    return AccountConfig(name=name, senders=(SenderPattern.parse(senders),), **defaults)


def config(*accounts: AccountConfig, **delivery) -> Config:
    return Config(server=ServerConfig(hostname="relay.example.com", shutdown_timeout=30),
                  accounts=accounts or (account(),), delivery=DeliveryConfig(**delivery))


@attrs.define
class Harness:
    tmp_path: object
    clock: task.Clock = attrs.field(factory=task.Clock)
    transports: dict = attrs.field(factory=lambda: {"main": ScriptedTransport()})
    engine: DeliveryEngine | None = None
    spool: Any = None
    jitter: float = 0.5  # random() == 0.5 means no jitter
    #: Run over the in-memory ISpool of xrelay.testing instead of the disk spool.
    memory: bool = False

    def __attrs_post_init__(self) -> None:
        self.clock.advance(START)

    @property
    def transport(self) -> ScriptedTransport:
        return self.transports["main"]

    def start(self, cfg: Config | None = None, events: object = None) -> DeliveryEngine:
        self.spool = (MemorySpool(directory=str(self.tmp_path)) if self.memory
                      else Spool(str(self.tmp_path), run_blocking=run_inline))
        self.engine = DeliveryEngine(cfg or config(), self.spool, self.transports,
                                     clock=self.clock, random=lambda: self.jitter,
                                     events=events)
        self.engine.startService()
        return self.engine

    def receive(self, sender: str = "scanner@example.com",
                recipients: tuple[str, ...] = ("a@example.org",), data: bytes = MESSAGE,
                account: str = "main", submit: bool = True) -> str:
        assert self.spool is not None and self.engine is not None
        incoming = self.spool.incoming(Envelope(sender, recipients, account=account,
                                                received_at=self.clock.seconds()))
        incoming.write(data)
        entry_id = incoming.commit().result
        if submit:
            self.engine.submitted(entry_id)
        return entry_id
