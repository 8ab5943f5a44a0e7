"""
Whether the running relay is healthy, check by check, for C{GET /healthz}, C{xrelay
health}, a container's HEALTHCHECK and the systemd unit.

Healthy means all of: the daemon runs (it answers: this code runs inside it), every
configured listener is bound, the spool folder is writable with more free space than
C{server.min_free_space}, and no account has been failing (no usable token) for longer
than C{server.health_grace} seconds.  The report names every check and which failed, so
that a load balancer's "unhealthy" can be read by a person.

Each check is a plain function of the relay and the time, so that the lead (or another
stage) can extend one without touching the others: L{failing_accounts} is the place for
other reasons an account cannot deliver (provider holds).  Nothing here writes anything
but a probe file in the spool folder, and nothing reported is a secret; but the full
report (PID, paths, listeners, account names, an identity platform's error text) is for
the operator, so what C{/healthz} tells anyone who reaches it is L{public_health}.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

__all__ = ["health_report", "public_health", "failing_accounts", "listeners_check",
           "spool_check", "DEFAULT_MIN_FREE_SPACE", "DEFAULT_GRACE"]

#: Defaults of C{server.min_free_space} and C{server.health_grace} for configurations
#: that predate them (read with C{getattr}).
DEFAULT_MIN_FREE_SPACE = 104857600
DEFAULT_GRACE = 900

#: Token states in which an account delivers.
USABLE = {"ok", "expiring", "refreshing"}


def disk_free(path: str) -> int:
    """Bytes free for the relay's user at C{path} (a seam: tests fake a full disk)."""
    return shutil.disk_usage(path).free


def failing_accounts(relay: Any, now: float) -> list[dict[str, Any]]:
    """
    Accounts that cannot deliver and have not been able to for longer than the grace
    period: no usable token since C{failing_since} (refused credentials, or an identity
    platform that stays unreachable).  One entry per account, with what to do.
    """
    grace = getattr(relay.config.server, "health_grace", DEFAULT_GRACE)
    failing = []
    for name, status in sorted(relay.tokens.status().items()):
        since = getattr(status, "failing_since", None)
        if since is None or status.state in USABLE:
            continue
        if status.expires_at is not None and status.expires_at > now:
            continue  # still delivering with the token it has
        if now - since <= grace:
            continue
        failing.append({"account": name, "state": status.state, "since": since,
                        "last_error": status.last_error, "hint": status.hint})
    failing.extend(_held_accounts(relay, now, grace, {f["account"] for f in failing}))
    return failing


def _held_accounts(relay: Any, now: float, grace: float, already: set[str]
                   ) -> list[dict[str, Any]]:
    """
    Accounts the provider has held (blocked, SMTP AUTH disabled, app not authorised,
    unreachable, throttled) for longer than the grace period, while their token may be
    fine.  A daily limit is not a failure: it is the provider's budget, and delivery
    resumes by itself at a known time.
    """
    from xrelay.replies import Hold

    held = getattr(relay.delivery.status(), "accounts", {}) or {}
    found = []
    for name, status in sorted(held.items()):
        if (name in already or not status.held or status.since is None
                or status.state == Hold.DAILY_LIMIT.value or now - status.since <= grace):
            continue
        found.append({"account": name, "state": status.state, "since": status.since,
                      "last_error": status.reason, "hint": status.fix})
    return found


def listeners_check(relay: Any) -> dict[str, Any]:
    """Every configured listener bound (as the inbound service itself recorded it)."""
    inbound = relay.inbound
    bound = getattr(inbound, "bound", {})
    configured = [listener.endpoint for listener in inbound.config.server.listen]
    missing = [e for e in configured if e not in bound or not _listening(bound[e])]
    check: dict[str, Any] = {"ok": bool(inbound.running) and not missing,
                             "bound": [e for e in configured if e not in missing]}
    if missing:
        check["not_bound"] = missing
        check["detail"] = (f"not listening on {', '.join(missing)}; the log says why "
                           "(address in use? permission?); restart xrelay once fixed")
    elif not inbound.running:
        check["detail"] = "the inbound service is stopped"
    return check


def _listening(port: Any) -> bool:
    return bool(getattr(port, "connected", True))


def spool_check(relay: Any) -> dict[str, Any]:
    """The spool folder takes a new file, and has more free space than the minimum."""
    minimum = getattr(relay.config.server, "min_free_space", DEFAULT_MIN_FREE_SPACE)
    folder = relay.spool.directory
    check: dict[str, Any] = {"path": folder, "min_free_space": minimum}
    # where new messages are first written
    probe = os.path.join(folder, "tmp", f"health-probe-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        check.update(ok=False, writable=False,
                     detail=f"cannot write in {folder} ({e.strerror}); fix its owner and "
                     "mode (the relay's user needs rwx)")
        return check
    check["writable"] = True
    try:
        free = disk_free(folder)
    except OSError as e:
        check.update(ok=False, detail=f"cannot tell the free space of {folder} "
                     f"({e.strerror})")
        return check
    check["free"] = free
    if free <= minimum:
        check.update(ok=False, detail=f"{free} bytes free in {folder}, not more than "
                     f"server.min_free_space ({minimum}); new mail gets 452 until space "
                     "is freed")
    else:
        check["ok"] = True
    return check


def health_report(relay: Any, now: float | None = None) -> dict[str, Any]:
    """
    The whole report::

        {"healthy": false, "failed": ["accounts"],
         "checks": {"daemon": {"ok": true, ...}, "listeners": {...}, "spool": {...},
                    "accounts": {"ok": false, "failing": [...], "grace": 900}}}
    """
    now = time.time() if now is None else now
    failing = failing_accounts(relay, now)
    checks: dict[str, dict[str, Any]] = {
        "daemon": {"ok": True, "pid": os.getpid()},
        "listeners": listeners_check(relay),
        "spool": spool_check(relay),
        "accounts": {"ok": not failing, "failing": failing,
                     "grace": getattr(relay.config.server, "health_grace", DEFAULT_GRACE)},
    }
    if failing:
        checks["accounts"]["detail"] = "; ".join(
            f"account {f['account']}: {f['state']} for {int(now - f['since'])} s"
            + (f"; {f['hint']}" if f.get("hint") else "") for f in failing)
    failed = [name for name, check in checks.items() if not check["ok"]]
    return {"healthy": not failed, "failed": failed, "checks": checks}


def public_health(report: dict[str, Any]) -> dict[str, Any]:
    """
    What a stranger may learn from a health report: healthy or not, and the names of
    the checks that failed (C{"spool"}, C{"accounts"}...), which are the same for every
    relay.  No PID, path, listener, account name, client id or error text.
    """
    return {"healthy": bool(report["healthy"]),
            "failed": [str(name) for name in report["failed"]],
            "detail": "sign in, or add this address to admin.monitoring_networks, for "
                      "the detail; `xrelay health` on the relay's host shows it too"}
