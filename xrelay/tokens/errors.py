"""
Why a token could not be had, in words an operator can act on.

The delivery engine tells these two apart: L{NeedsSignIn} defers an account's mail until
somebody signs in again (it must never turn into a bounce), L{TokenUnavailable} is a
passing failure of the identity platform that is retried with back-off.

Nothing here may carry a token, a refresh token, a client secret or a cache key: these
exceptions end up in logs, in SMTP replies to devices and on the admin page.
"""

from __future__ import annotations


class TokenError(Exception):
    """Base of the token service's own failures."""


class NeedsSignIn(TokenError):
    """
    The account's credentials were refused for good (C{invalid_grant}: revoked, password
    changed, consent withdrawn; or a client secret that the platform no longer accepts).
    An operator must act; until then the account's mail waits in the queue.

    @ivar account: the C{[[accounts]]} name.
    @ivar hint: what to do about it, e.g. C{run `xrelay login main`}.
    @ivar reason: the platform's error, without secrets.
    @ivar state: what the refusal is (C{"needs sign-in"}, C{"client secret expired"},
        ...: a L{xrelay.tokens.status.TokenState} value).
    """

    def __init__(self, account: str, hint: str, reason: str = "",
                 state: str = "needs sign-in") -> None:
        super().__init__(account, hint, reason)
        self.account = account
        self.hint = hint
        self.reason = reason
        self.state = state

    def __str__(self) -> str:
        because = f" ({self.reason})" if self.reason else ""
        if self.state == "needs sign-in":
            return f"account {self.account!r} needs sign-in{because}: {self.hint}"
        return f"account {self.account!r}: {self.state}{because}: {self.hint}"


class TokenUnavailable(TokenError):
    """
    The identity platform could not give a token just now (5xx, timeout, connection
    refused, or the source is backing off after such a failure).

    @ivar retry_at: when the source will try again (reactor time), if known.
    """

    def __init__(self, account: str, reason: str, retry_at: float | None = None) -> None:
        super().__init__(account, reason, retry_at)
        self.account = account
        self.reason = reason
        self.retry_at = retry_at

    def __str__(self) -> str:
        return f"no token for account {self.account!r} right now: {self.reason}"


class SignInFailed(TokenError):
    """
    An interactive sign-in (device code, browser) did not complete: expired, declined,
    or done as the wrong user.  The account keeps its previous state.
    """

    def __init__(self, account: str, reason: str) -> None:
        super().__init__(account, reason)
        self.account = account
        self.reason = reason

    def __str__(self) -> str:
        return f"sign-in for account {self.account!r} failed: {self.reason}"


class GrantRefused(Exception):
    """
    Raised by a grant (the provider-specific part of a token source) when the platform
    refused the credentials for good; the source turns it into L{NeedsSignIn}.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class GrantUnavailable(Exception):
    """
    Raised by a grant when the platform failed temporarily; the source backs off and
    turns it into L{TokenUnavailable}.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
