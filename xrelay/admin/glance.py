"""
The status page's reading of the relay's state: one line that says whether all is well,
and one plain row per account.

It gathers what the stages already report (token states, the engine's holds and daily
budgets, credential expiry where the configuration or the token status carries it) into
values the page only has to print; a field a stage does not report is C{None} and is
shown as a dash.  Pure: no I/O, the time is given.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import attrs

from xrelay.history.query import local_time

__all__ = ["AccountView", "account_views", "overall_line", "age_text", "GOOD_STATES",
           "WAITING_STATES"]

#: Token states in which the account delivers.
GOOD_STATES = frozenset({"ok", "expiring", "refreshing"})
#: Token states that need nobody: an account that has not needed a token yet gets one
#: when it does (a delegated one that cannot shows "needs sign-in" then).
FINE_STATES = GOOD_STATES | {"no token"}
#: Spool states that count as waiting for delivery.
WAITING_STATES = ("queued", "active", "deferred")


@attrs.frozen
class AccountView:
    """One account's row on the status page."""

    name: str
    user: str
    provider: str
    flow: str
    #: The token state ("ok", "needs sign-in", ...).
    state: str
    #: The engine holds the account's mail until then (throttled, token trouble).
    held_until: float | None
    #: "1 of 10,000 (9,999 left)", "no limit", or None when not known.
    budget: str | None
    #: When the account's credential (client secret, certificate) stops working,
    #: e.g. "certificate 2027-06-30", and whether that is within 30 days.
    credential_expires: str | None
    token_expires: float | None
    last_error: str | None
    hint: str | None
    credential_soon: bool = False
    #: The provider's state of the account ("ok", "SMTP AUTH disabled", ...) with its
    #: time ("daily limit reached (resumes at 14:05)"), and the fix while held.
    provider_state: str = "ok"
    provider_fix: str | None = None
    provider_held: bool = False
    #: When a held account sends its next probe (or its budget frees up).
    provider_until: float | None = None

    @property
    def mail_flow(self) -> str:
        """
        What decides whether its mail flows, first: a hold (why, until when), then a
        token that stops it, then the engine's own pause; "delivering" otherwise.
        """
        if self.provider_held:
            until = (f" until {local_time(self.provider_until)}"
                     if self.provider_until and "resumes at" not in self.provider_state
                     else "")
            return f"held: {self.provider_state}{until}"
        if self.state not in FINE_STATES:
            return f"not delivering: token {self.state}"
        if self.held_until is not None:
            return f"held until {local_time(self.held_until)}"
        return "delivering"

    @property
    def delivering(self) -> bool:
        return (self.state in FINE_STATES and self.held_until is None
                and not self.provider_held)

    @property
    def condition(self) -> str:
        """What the row says in words."""
        if self.state not in FINE_STATES:
            return self.state
        if self.provider_held:
            return self.provider_state
        if self.held_until is not None:
            return f"held until {local_time(self.held_until)}"
        return "delivering"


def expiry_text(expiry: Any) -> str:
    """A credential's end as the page shows it: "client secret 2027-06-30" (UTC date)."""
    day = time.strftime("%Y-%m-%d", time.gmtime(expiry.expires_at))
    return f"{expiry.credential.replace('_', ' ')} {day}"


def _credential_expiry(account: Any, expiry: Any, now: float) -> tuple[str | None, bool]:
    if expiry is not None:
        return expiry_text(expiry), expiry.expires_at - now < 30 * 86400
    configured = getattr(account, "client_secret_expires", None)
    return (f"client secret {configured}" if configured else None), False


def _budget(account: Any, provider: Any) -> str | None:
    limit = getattr(account, "recipients_per_day", 0)
    if not limit:
        return "no limit"
    if provider is None:
        return None
    return (f"{provider.recipients_today:,} of {limit:,} "
            f"({provider.recipients_left:,} left)")


def account_views(accounts: Iterable[Any], statuses: dict[str, Any],
                  paused_until: dict[str, float], now: float,
                  provider_states: dict[str, Any] | None = None,
                  expiries: dict[str, Any] | None = None) -> list[AccountView]:
    """
    @param accounts: the configured accounts.
    @param statuses: account name -> its token status.
    @param paused_until: account name -> until when the engine holds its mail.
    @param provider_states: account name -> its provider state and daily budget
        (L{xrelay.delivery.accounts.AccountStatus}).
    @param expiries: account name -> its credential that ends first
        (L{xrelay.tokens.expiry.CredentialExpiry}).
    """
    views = []
    for account in accounts:
        status = statuses.get(account.name)
        provider = (provider_states or {}).get(account.name)
        held = paused_until.get(account.name)
        expires, soon = _credential_expiry(account, (expiries or {}).get(account.name),
                                           now)
        views.append(AccountView(
            name=account.name, user=account.user, provider=account.provider,
            flow=account.flow, state=status.state if status is not None else "unknown",
            held_until=held if held and held > now else None,
            budget=_budget(account, provider),
            credential_expires=expires, credential_soon=soon,
            token_expires=getattr(status, "expires_at", None),
            last_error=getattr(status, "last_error", None),
            hint=getattr(status, "hint", None),
            provider_state=provider.label if provider is not None else "ok",
            provider_fix=provider.fix if provider is not None and provider.held else None,
            provider_held=bool(provider is not None and provider.held),
            provider_until=provider.next_probe if provider is not None else None))
    return views


def age_text(seconds: float) -> str:
    """An age as people say it: 40 s, 12 min, 2 h, 3 d."""
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} d"


def overall_line(views: list[AccountView], counts: dict[str, int],
                 oldest_age: float | None) -> tuple[str, bool]:
    """
    The one line at the top of the status page, and whether all is well:
    "All accounts delivering; 0 waiting", "1 account needs attention; 12 waiting,
    oldest 2 h".
    """
    trouble = [v for v in views if not v.delivering]
    if not views:
        head = "No upstream account configured"
    elif not trouble:
        head = "All accounts delivering"
    elif len(trouble) == 1:
        head = "1 account needs attention"
    else:
        head = f"{len(trouble)} accounts need attention"
    waiting = sum(counts.get(state, 0) for state in WAITING_STATES)
    tail = f"{waiting} waiting"
    if waiting and oldest_age is not None:
        tail += f", oldest {age_text(oldest_age)}"
    failed = counts.get("failed", 0)
    if failed:
        tail += f"; {failed} failed kept for inspection"
    return f"{head}; {tail}", bool(views) and not trouble
