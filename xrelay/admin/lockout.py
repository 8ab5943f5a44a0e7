"""
Who may try the admin password, and how soon: the admin page's defence against
guessing that cannot be turned into a lockout of the operator.

Failures are counted with L{xrelay.policy.AuthFailures} (attempts in flight included,
so forty concurrent guesses get five checks, not forty): per source, five wrong
passwords in five minutes refuse that source; per account, failures from other
sources only slow the answers down.

"Source" is the client address, except for a browser that has signed in before: it
carries a signed I{device cookie} (OWASP's "device cookies" against targeted lockout)
and is counted under that cookie instead.  So a local user who types five wrong
passwords into a loopback admin page (where every local user has the address
127.0.0.1) locks out 127.0.0.1 for five minutes, but not the operator's browser.  The
cookie's key lives in memory: after a restart a browser counts by address again until
it signs in once more.

This module never sees a password; it must never log a cookie value.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import attrs

from xrelay.policy import AuthFailures

__all__ = ["DEVICE_COOKIE", "DEVICE_MAX_AGE", "SignInGuard"]

DEVICE_COOKIE = "xrelay_device"
#: Seconds a device cookie is kept by the browser.
DEVICE_MAX_AGE = 365 * 24 * 3600
#: Wrong passwords allowed from one source within FAILURE_WINDOW seconds.
MAX_FAILURES = 5
FAILURE_WINDOW = 300.0
#: The account name of the admin page's one password, for the per-account count.
ADMIN_ACCOUNT = "admin"


def _admin_failures() -> AuthFailures:
    # The admin types: their own mistakes cost no wait (the limit is enough); others'
    # mistakes slow them only once they mistyped too, by at most aimed_max_delay.
    return AuthFailures(window=FAILURE_WINDOW, base_delay=1.0, max_delay=10.0,
                        per_address_limit=MAX_FAILURES, source_delay=False,
                        max_tracked=10000)


@attrs.define
class SignInGuard:
    failures: AuthFailures = attrs.field(factory=_admin_failures)
    _key: bytes = attrs.field(factory=lambda: secrets.token_bytes(32), repr=False)

    def _mac(self, nonce: str) -> str:
        return hmac.new(self._key, nonce.encode("ascii"), hashlib.sha256).hexdigest()

    def device_cookie(self) -> str:
        """A new device cookie value, for a browser that just signed in."""
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._mac(nonce)}"

    def source(self, address: str, cookie: bytes | None) -> str:
        """The key failures are counted under: the device, if its cookie is ours."""
        if cookie:
            nonce, _, mac = cookie.decode("ascii", "replace").partition(".")
            if nonce and mac and nonce.isascii() and hmac.compare_digest(
                mac.encode("ascii", "replace"), self._mac(nonce).encode("ascii")
            ):
                return f"device:{nonce}"
        return address
