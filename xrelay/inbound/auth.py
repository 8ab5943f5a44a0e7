"""
SMTP AUTH for local C{[[users]]}: the SASL PLAIN and LOGIN encodings, and the password
check against the stored scrypt hashes.

Only PLAIN and LOGIN are offered.  CRAM-MD5 and the other challenge-response mechanisms
need the plaintext password on the server, which xrelay never stores; over TLS, PLAIN
and LOGIN are as safe as anything a printer speaks.

The check runs L{xrelay.passwords.verify_password} in a thread (it is deliberately slow)
and runs it for unknown user names too, against a throw-away hash, so that neither the
reply nor its timing tells a client which users exist.  This module must never log,
return or put into an exception a password or the response that carries one.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred

from xrelay.config import UserConfig
from xrelay.passwords import hash_password, verify_password

__all__ = ["MECHANISMS", "decode_response", "parse_plain", "PasswordChecker"]

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


_dummy_hash: str | None = None


def _unknown_user_hash() -> str:
    """A hash nobody knows the password of, made once: unknown users cost as much."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = hash_password(os.urandom(32).hex())
    return _dummy_hash


@attrs.define
class PasswordChecker:
    """
    Checks a user name and password against C{[[users]]}.

    @ivar run_blocking: runs a blocking callable and returns a Deferred of its result
        (the reactor's thread pool in the service; tests may run it inline).
    """

    users: tuple[UserConfig, ...]
    run_blocking: Callable[..., "Deferred[Any]"]

    def check(self, name: str, password: str) -> "Deferred[UserConfig | None]":
        """Fires with the user when the password is right, else with C{None}."""
        user = next((u for u in self.users if u.name == name), None)

        def verify() -> bool:
            # In the thread: even making the throw-away hash must not block the reactor.
            stored = user.password_hash if user is not None else _unknown_user_hash()
            try:
                return verify_password(password, stored)
            except ValueError:
                return False

        d = self.run_blocking(verify)
        d.addCallback(lambda ok: user if ok and user is not None else None)
        return d
