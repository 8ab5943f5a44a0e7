"""
Routing: which upstream account carries a message, decided by its envelope sender.

The first account whose C{senders} patterns match wins; then C{relay.default_account};
otherwise the sender cannot be relayed and the inbound side refuses it at MAIL FROM.
Pure functions over the configuration: no I/O.
"""

from __future__ import annotations

from xrelay.addresses import matches_any
from xrelay.config import GRAPH_SINGLE_REQUEST_MESSAGE, AccountConfig, Config


def route_sender(config: Config, sender: str) -> AccountConfig | None:
    """
    The account for this envelope sender, or C{None} when no account may send as it.

    The null sender (C{""}, a bounce from a device) goes through the first account (or
    the default one): bounces must still be deliverable.
    """
    if sender:
        for account in config.accounts:
            if matches_any(account.senders, sender):
                return account
    if config.relay.default_account is not None:
        return config.account(config.relay.default_account)
    if not sender and config.accounts:
        return config.accounts[0]
    return None


def entry_account(config: Config, account: str, sender: str) -> AccountConfig | None:
    """
    The account a spooled message goes through: the one chosen when it was accepted,
    while that account is still configured, else the one its sender routes to now.
    """
    if account in {a.name for a in config.accounts}:
        return config.account(account)
    return route_sender(config, sender)


def sendable_senders(config: Config) -> list[str]:
    """The sender patterns this relay can deliver, for the text of a refusal."""
    return [p.text for account in config.accounts for p in account.senders]



def route_size_limit(config: Config, account: AccountConfig) -> tuple[int, str]:
    """
    The largest message this account can carry, and why it is that, for the reply at
    the end of DATA while the device still listens (a 250 and a bounce later reaches a
    scanner's unread mailbox).  C{server.max_message_size} caps every route.
    """
    own, why = account.largest_message()
    if own is not None and own < config.server.max_message_size:
        return own, why
    return config.server.max_message_size, "server.max_message_size"


def largest_route_size(config: Config) -> int:
    """What C{SIZE} advertises: the largest message some route can carry."""
    if not config.accounts:
        return config.server.max_message_size
    return max(route_size_limit(config, account)[0] for account in config.accounts)


def unsplittable(account: AccountConfig, size: int, content_type: str | None) -> str | None:
    """
    Why a message cannot go through this account although its size is within the
    route's limit, or C{None}: over Graph's single request, upload sessions can only
    carry it by taking attachments out of a C{multipart} message, so a single-part or
    S/MIME one (C{multipart/signed}, C{application/pkcs7-mime}) would be accepted and
    then bounced.  Said at the end of DATA instead, while the device listens.
    """
    if account.transport != "graph" or account.graph_large_messages != "upload_session":
        return None
    if size <= GRAPH_SINGLE_REQUEST_MESSAGE:
        return None
    kind = (content_type or "text/plain").split(";")[0].strip().lower()
    if kind.startswith("multipart/") and kind != "multipart/signed":
        return None
    return (f"Message too big for account {account.name}: a {kind} message over "
            f"{GRAPH_SINGLE_REQUEST_MESSAGE} bytes cannot be split into a Microsoft Graph "
            "draft and attachment uploads (send it as attachments, or use an account "
            "with transport = \"smtp\")")
