"""
SMTP AUTH's SASL PLAIN and LOGIN encodings.  Who a name and password belong to is
L{xrelay.inbound.credentials}' job (C{twisted.cred}).

Only PLAIN and LOGIN are offered.  CRAM-MD5 and the other challenge-response mechanisms
need the plaintext password on the server, which xrelay never stores; over TLS, PLAIN
and LOGIN are as safe as anything a printer speaks.

This module must never log, return or put into an exception a password or the response
that carries one.
"""

from __future__ import annotations

import base64
import binascii

__all__ = ["MECHANISMS", "MalformedResponse", "decode_response", "decode_text", "parse_plain"]

#: What EHLO advertises, in order of preference.
MECHANISMS = ("PLAIN", "LOGIN")

#: The LOGIN mechanism's traditional prompts, base64 of "Username:" and "Password:".
LOGIN_USERNAME_PROMPT = base64.b64encode(b"Username:").decode()
LOGIN_PASSWORD_PROMPT = base64.b64encode(b"Password:").decode()


class MalformedResponse(ValueError):
    """The client's SASL response is not valid base64 or not the mechanism's format."""


def decode_response(text: str) -> bytes:
    """
    Decode one base64 SASL response (C{"="} is the empty response, RFC 4954).

    @raise MalformedResponse: for anything that is not strict base64.
    """
    if text == "=":
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise MalformedResponse("not base64") from None


def parse_plain(response: bytes) -> tuple[str, str]:
    """
    Split a PLAIN response (RFC 4616: authzid NUL authcid NUL password).

    An authorization identity other than the user's own is refused: a device acting
    for another user is not something the relay supports.

    @raise MalformedResponse: when it is not three NUL-separated UTF-8 fields, or asks
        to act as somebody else.
    """
    parts = response.split(b"\x00")
    if len(parts) != 3:
        raise MalformedResponse("not authzid NUL authcid NUL password")
    try:
        authzid, authcid, password = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError:
        raise MalformedResponse("not UTF-8") from None
    if authzid and authzid != authcid:
        raise MalformedResponse("authorization identity differs")
    return authcid, password


def decode_text(response: bytes) -> str:
    """A LOGIN user name or password as text (RFC 4954 says UTF-8)."""
    try:
        return response.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedResponse("not UTF-8") from None
