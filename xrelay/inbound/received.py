"""
The C{Received:} header the relay adds on top of every accepted message.

It records who handed the message in (the name the client gave, its address as seen
after the PROXY protocol), how (the RFC 3848 / RFC 6531 protocol keyword says whether
TLS and SMTP AUTH were used), when, and the relay's transaction id for the log.
It must never contain a CR or LF from client input (a client-chosen HELO could
otherwise inject headers), nor the authenticated user's name or any secret: the
header travels to every recipient.
"""

from __future__ import annotations

import re
from email.utils import formatdate

__all__ = ["received_header", "protocol_keyword"]

_UNSAFE = re.compile(r"[^\x21-\x7e]")


def protocol_keyword(esmtp: bool, tls: bool, authenticated: bool, smtputf8: bool) -> str:
    """C{SMTP}, C{ESMTP}, C{ESMTPS}, C{ESMTPA}, C{ESMTPSA} or their C{UTF8SMTP} forms."""
    if not esmtp:
        return "SMTP"
    base = "UTF8SMTP" if smtputf8 else "ESMTP"
    return base + ("S" if tls else "") + ("A" if authenticated else "")


def _clean(text: str, limit: int = 100) -> str:
    """Client-supplied text reduced to visible ASCII, so it cannot break the header."""
    return _UNSAFE.sub("?", text)[:limit] or "unknown"


def received_header(*, helo: str, client_address: str, hostname: str, keyword: str,
                    transaction_id: str, when: float) -> bytes:
    """
    The header in wire format, folded, ending in CRLF.

    >>> received_header(helo="printer", client_address="192.0.2.7", hostname="relay",
    ...                 keyword="ESMTPSA", transaction_id="abc", when=0)[:38]
    b'Received: from printer ([192.0.2.7])\\r\\n'
    """
    address = _clean(client_address, 64)
    if ":" in address and not address.startswith("IPv6:"):
        address = "IPv6:" + address
    lines = [
        f"Received: from {_clean(helo)} ([{address}])",
        f"\tby {_clean(hostname)} (xrelay) with {keyword} id {_clean(transaction_id)};",
        f"\t{formatdate(when, localtime=False, usegmt=True)}",
    ]
    return "\r\n".join(lines).encode("ascii") + b"\r\n"
