"""
When the credentials that keep the relay running stop working: the accounts' client
certificates (read from the certificate files), their client secrets (the optional
C{client_secret_expires} date: Entra ID does not tell a client when its secret ends),
and the listeners' own TLS certificate (C{server.tls_cert}).

The outage a credential causes is always announced weeks before in its expiry date;
this module turns the dates into warnings (log lines 30 and 7 days ahead, lines for
C{xrelay check-config} and C{xrelay accounts}) and the values of the metric
C{xrelay_credential_expiry_timestamp_seconds}.  It reads certificate files (public
parts only) and never a secret or a private key.
"""

from __future__ import annotations

import datetime
import time
from typing import Any, Iterable

import attrs
from cryptography import x509
from twisted.logger import Logger

__all__ = ["CredentialExpiry", "credential_expiries", "expiry_warnings", "ExpiryWatch",
           "WARN_DAYS", "parse_expiry_date"]

log = Logger(namespace="xrelay.tokens")

#: Days ahead of an expiry at which the daemon logs a warning (once each).
WARN_DAYS = (30, 7)
DAY = 86400.0


@attrs.frozen
class CredentialExpiry:
    """
    One credential with an end date.

    @ivar scope: C{"account"} or C{"listener"}: the metric label that names C{owner}.
    @ivar owner: the account name, or the listener's endpoint description.
    @ivar credential: C{"certificate"}, C{"client_secret"} or C{"tls_cert"}.
    @ivar path: the file the date was read from, or the configuration key.
    @ivar expires_at: POSIX time.
    """

    scope: str
    owner: str
    credential: str
    path: str
    expires_at: float

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.scope, self.owner, self.credential)

    def describe(self, now: float) -> str:
        """A warning line: what, when, and what to do."""
        day = time.strftime("%Y-%m-%d", time.gmtime(self.expires_at))
        left = (self.expires_at - now) / DAY
        when = (f"expired on {day}" if left <= 0 else
                f"expires on {day} (in {max(1, int(left + 0.999))} days)")
        what = {"certificate": f"the certificate {self.path}",
                "client_secret": "the client secret (client_secret_expires)",
                "tls_cert": f"the TLS certificate {self.path}"}[self.credential]
        fix = {"certificate": (f"run `xrelay setup rotate {self.owner}` (or the rotate "
                               "button on the admin page's Add an account page)"
                               if "/managed/credentials/" in self.path else
                               "upload a new certificate to the app registration and put "
                               "it and its key in certificate_file / certificate_key_file"),
               "client_secret": "create a new client secret in the app registration, "
                                "write it into client_secret_file and update "
                                "client_secret_expires",
               "tls_cert": "renew it and replace server.tls_cert and server.tls_key, "
                           "then `xrelay reload`"}[self.credential]
        owner = (f"account {self.owner}" if self.scope == "account"
                 else f"listener {self.owner}")
        return f"{owner}: {what} {when}; {fix}"


def parse_expiry_date(text: str) -> float:
    """C{"YYYY-MM-DD"} -> the POSIX time of the end of that day (UTC).

    @raise ValueError: for anything else.
    """
    day = datetime.date.fromisoformat(text)
    if len(text) != 10:
        raise ValueError(text)
    end = datetime.datetime.combine(day, datetime.time(23, 59, 59),
                                    tzinfo=datetime.timezone.utc)
    return end.timestamp()


def _not_after(path: str) -> float | None:
    try:
        with open(path, "rb") as f:
            certificates = x509.load_pem_x509_certificates(f.read())
    except (OSError, ValueError):
        return None
    if not certificates:
        return None
    return certificates[0].not_valid_after_utc.timestamp()


def credential_expiries(config: Any) -> list[CredentialExpiry]:
    """Every credential of the configuration that has a known end date (blocking: reads
    the certificate files)."""
    found: list[CredentialExpiry] = []
    for account in config.accounts:
        if account.certificate_file:
            at = _not_after(account.certificate_file)
            if at is not None:
                found.append(CredentialExpiry("account", account.name, "certificate",
                                              account.certificate_file, at))
        expires = getattr(account, "client_secret_expires", None)
        if expires:
            try:
                at = parse_expiry_date(expires)
            except ValueError:
                at = None
            if at is not None:
                found.append(CredentialExpiry("account", account.name, "client_secret",
                                              f'accounts."{account.name}".'
                                              "client_secret_expires", at))
    tls_cert = config.server.tls_cert
    if tls_cert:
        at = _not_after(tls_cert)
        if at is not None:
            for listener in config.server.listen:
                found.append(CredentialExpiry("listener", listener.endpoint, "tls_cert",
                                              tls_cert, at))
    return found


def expiry_warnings(expiries: Iterable[CredentialExpiry], now: float,
                    days: int = WARN_DAYS[0]) -> list[str]:
    """Lines for the credentials that end within C{days} (or already ended)."""
    lines: list[str] = []
    seen: set[tuple[str, str, float]] = set()
    for e in sorted(expiries, key=lambda e: e.expires_at):
        if e.expires_at - now > days * DAY:
            continue
        # one TLS certificate serves every listener: say it once
        dedup = (e.credential, e.path, e.expires_at) if e.scope == "listener" else (
            e.credential, e.owner, e.expires_at)
        if dedup in seen:
            continue
        seen.add(dedup)
        lines.append(e.describe(now))
    return lines


def soonest_by_account(expiries: Iterable[CredentialExpiry]) -> dict[str, CredentialExpiry]:
    """Each account's credential that ends first (for the admin page's column)."""
    soonest: dict[str, CredentialExpiry] = {}
    for e in expiries:
        if e.scope == "account" and (e.owner not in soonest
                                     or e.expires_at < soonest[e.owner].expires_at):
            soonest[e.owner] = e
    return soonest


@attrs.define
class ExpiryWatch:
    """
    The daemon's watch: L{check} (called at start and then hourly) re-reads the dates
    and logs a warning when a credential comes within 30 days, again within 7 days,
    and when it has expired: each once per daemon run.
    """

    config: Any
    expiries: list[CredentialExpiry] = attrs.field(factory=list)
    _warned: set[Any] = attrs.field(factory=set)

    def check(self, now: float) -> list[str]:
        """Re-read the dates; log (and return) the warnings due now."""
        try:
            self.expiries = credential_expiries(self.config)
        except Exception:
            log.failure("Could not read the credentials' expiry dates")
            return []
        logged: list[str] = []
        for e in self.expiries:
            left = e.expires_at - now
            due = [d for d in (*WARN_DAYS, 0) if left <= d * DAY]
            if not due:
                continue
            threshold = min(due)
            # one TLS certificate serves every listener: warn once for it
            which = ("listener", e.path, e.credential) if e.scope == "listener" else e.key
            mark = (which, e.expires_at, threshold)
            if mark in self._warned:
                continue
            self._warned.add(mark)
            line = e.describe(now)
            log.warn("Credential expiry: {warning}", warning=line,
                     credential=e.credential, expires_at=e.expires_at)
            logged.append(line)
        return logged
