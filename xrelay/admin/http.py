"""
What every admin route uses of a request: the refusal it answers with (L{Refused}), the
security headers on every response, a POST's form-body fields and the client's address.

No policy here (which page needs a session, which POST a CSRF token: that is
L{xrelay.admin.web}'s); this module must never log, and never read a cookie's, a
password's or a token's value.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Awaitable, Protocol
from urllib.parse import parse_qs, urlsplit


def security_headers(form_targets: list[str]) -> dict[bytes, bytes]:
    """
    The headers on every response.  C{form-action} lists the identity platforms too:
    the sign-in form's redirect goes there, and browsers apply C{form-action} to it.
    """
    targets = " ".join(["'self'", *form_targets])
    return {
        b"content-security-policy": (
            "default-src 'none'; style-src 'self'; img-src 'self'; "
            f"form-action {targets}; frame-ancestors 'none'; base-uri 'none'"
        ).encode("ascii"),
        b"x-frame-options": b"DENY",
        b"x-content-type-options": b"nosniff",
        # same-origin, not no-referrer: under no-referrer browsers send "Origin: null"
        # with the site's own forms, and the CSRF check wants their real Origin.
        b"referrer-policy": b"same-origin",
        b"cache-control": b"no-store",
        b"cross-origin-opener-policy": b"same-origin",
    }


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class Refused(Exception):
    """
    A request answered with an error page: status, text for the person, and the
    headers the status needs (C{Allow} with a 405, RFC 9110 15.5.6).
    """

    def __init__(self, code: int, text: str,
                 headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text
        self.headers = headers or {}



class AdminPages(Protocol):
    """
    What the admin's page modules (devices, the accounts' browser sign-in) use of the
    site (L{xrelay.admin.web.AdminSite}, which routes to them): named here so that they
    do not import the site above them.
    """

    relay: Any
    reactor: Any

    @property
    def config(self) -> Any: ...

    def _form(self, request: Any, name: str) -> str | None: ...

    def _redirect(self, request: Any, location: str) -> None: ...

    def _html(self, element: Any) -> Awaitable[bytes]: ...


def text_of(value: bytes | None) -> str:
    return (value or b"").decode("utf-8", "replace")


def form_body_field(request: Any, name: str) -> str | None:
    """
    A field of the POST's form body only: Twisted's C{request.args} mixes the query
    string in, so a field that is (also) in the query string is not taken at all.
    """
    query = urlsplit(request.uri or b"").query
    if name.encode("ascii") in parse_qs(query, keep_blank_values=True):
        return None
    values = request.args.get(name.encode("ascii"))
    return values[0].decode("utf-8", "replace") if values else None


def client_in(networks: Any, address: str) -> bool:
    """Whether a client address lies in one of these networks."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)


def client_address(request: Any) -> str:
    address = request.getClientAddress()
    return getattr(address, "host", str(address))
