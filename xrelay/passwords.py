"""
Password hashes for local SMTP AUTH users and the admin page.

Only slow, salted scrypt hashes are stored, in a self-describing text form
(C{$scrypt$ln=15,r=8,p=1$<salt>$<hash>}, base64 without padding), so that a leaked
configuration file does not leak device passwords.  Verification costs tens of
milliseconds of CPU on purpose: callers on the reactor thread must run L{verify_password}
in a thread.  Nothing here may log a password or put one in an exception.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

PREFIX = "$scrypt$"

#: log2 of scrypt's N, its block size r and parallelism p: 2**15 * 128 * 8 = 32 MiB and
#: roughly 50 ms per verification, which makes guessing slow without making a device's
#: login noticeably slower.
DEFAULT_LOG2_N = 15
DEFAULT_R = 8
DEFAULT_P = 1


class InvalidPasswordHash(ValueError):
    """The text is not a password hash this module produces."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _derive(password: bytes, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password, salt=salt, n=2**log2_n, r=r, p=p, maxmem=2**log2_n * r * 256, dklen=32
    )


def hash_password(
    password: str, *, log2_n: int = DEFAULT_LOG2_N, r: int = DEFAULT_R, p: int = DEFAULT_P
) -> str:
    """Hash a password with a fresh random salt."""
    salt = os.urandom(16)
    digest = _derive(password.encode("utf-8"), salt, log2_n, r, p)
    return f"{PREFIX}ln={log2_n},r={r},p={p}${_b64(salt)}${_b64(digest)}"


def parse_password_hash(text: str) -> tuple[int, int, int, bytes, bytes]:
    """
    Split a hash into its parameters, salt and digest.

    @raise InvalidPasswordHash: when the text is not such a hash (for example a
        plaintext password pasted into the configuration by mistake).  The message never
        repeats the text, since it may be a password.
    """
    if not text.startswith(PREFIX):
        raise InvalidPasswordHash("not a $scrypt$ hash")
    try:
        params, salt_text, digest_text = text[len(PREFIX) :].split("$")
        fields = dict(item.split("=", 1) for item in params.split(","))
        log2_n, r, p = int(fields["ln"]), int(fields["r"]), int(fields["p"])
        salt, digest = _unb64(salt_text), _unb64(digest_text)
    except (ValueError, KeyError):
        raise InvalidPasswordHash("malformed $scrypt$ hash") from None
    if not (1 <= log2_n <= 22 and 1 <= r <= 32 and 1 <= p <= 16) or len(digest) != 32:
        raise InvalidPasswordHash("unsupported $scrypt$ parameters")
    return log2_n, r, p, salt, digest


def verify_password(password: str, password_hash: str) -> bool:
    """
    Whether the password matches the hash, compared in constant time.

    Blocking and CPU-heavy: call it from a thread (C{deferToThread}).
    """
    log2_n, r, p, salt, digest = parse_password_hash(password_hash)
    candidate = _derive(password.encode("utf-8"), salt, log2_n, r, p)
    return hmac.compare_digest(candidate, digest)
