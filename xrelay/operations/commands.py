"""
The operator's subcommands of C{xrelay}: C{accounts}, C{health}, C{doctor}, C{login},
C{queue}, C{send-test} and C{reload}.

Each asks the running daemon over its control channel when it answers; otherwise the
queue commands take the spool lock and work on the spool directly, C{accounts} says the
daemon is not running (C{--offline} reads the token cache files), C{health} reports the
daemon check failed, and C{login} signs in on its own (the daemon, when it starts or
while it polls, picks the stored tokens up).  Exit status: 0 done (for C{accounts}: every
account usable), 1 a problem the message names, 2 a usage mistake.  Nothing here prints
a token or a secret, and none writes anything when it was given no configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

from twisted.internet import defer

from xrelay.cli import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, _origin, command, config_from
from xrelay.config import Config
from xrelay.operations.control import (
    ControlClient,
    ControlHandlers,
    ControlRefusal,
    DaemonNotRunning,
    SpoolLock,
    SpoolLocked,
)
from xrelay.operations.queue import QueueProblem

#: Token states in which an account delivers mail.
USABLE = {"ok", "expiring", "refreshing"}


def _problem(text: str) -> int:
    print(f"xrelay: {text}", file=sys.stderr)
    return EXIT_PROBLEM


class _OfflineRelay:
    """The parts of a relay that the queue commands need, without a daemon."""

    def __init__(self, config: Config) -> None:
        import os

        from xrelay.spool import Spool, run_inline

        self.config = config
        self.spool = Spool(os.path.join(config.server.state_dir, "spool"),
                           reactor=object(), run_blocking=run_inline)
        self.delivery = None


def _run_now(d: "defer.Deferred[Any]") -> Any:
    """The result of work that completes synchronously (spool work run inline)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "offline spool work must complete synchronously"
    result = results[0]
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


def _ask(config: Config, op: str, **args: Any) -> Any:
    """
    Ask the daemon; without one, do it here under the spool lock.

    @raise ControlRefusal, QueueProblem: with the operator's message.
    """
    state_dir = config.server.state_dir
    try:
        return ControlClient(state_dir).request(op, **args)
    except DaemonNotRunning:
        pass
    if config.path is None:
        # Without a configuration there is no spool of ours: do not make one here.
        raise ControlRefusal("the relay is not running and no configuration was given "
                             "(--config FILE or $XRELAY_CONFIG); nothing to look at")
    lock = SpoolLock(state_dir)
    try:
        lock.acquire()
    except SpoolLocked:
        raise ControlRefusal(f"a daemon holds {lock.path} but does not answer on its "
                             "control socket; try again, or check its log") from None
    except PermissionError:
        raise ControlRefusal(f"no permission to use {state_dir}; run the command as the "
                             "relay's user or root") from None
    try:
        handlers = ControlHandlers(_OfflineRelay(config))
        return _run_now(defer.ensureDeferred(handlers.handle(op, args, lambda e: None)))
    finally:
        lock.release()


def _guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def guarded(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (ControlRefusal, QueueProblem) as e:
            return _problem(str(e))
        except PermissionError as e:
            return _problem(f"no permission to use {e.filename}; run the command as the "
                            "relay's user or root")
    guarded.__doc__ = run.__doc__
    return guarded


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


# -- accounts ------------------------------------------------------------------------


def _json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _accounts_arguments(parser: argparse.ArgumentParser) -> None:
    _json_argument(parser)
    parser.add_argument("--offline", action="store_true", help="read the states the "
                        "daemon last recorded in the token cache instead of asking it")


@command("accounts", "show each upstream account and its token state as the running "
         "daemon sees it (ok / expiring / client secret rejected / needs sign-in ...); "
         "exits 1 when any account cannot deliver or the daemon is not running",
         _accounts_arguments)
@_guarded
def accounts_command(args: argparse.Namespace) -> int:
    config = config_from(args)
    if args.offline:
        if config.path is None:
            return _problem("no configuration given (--config FILE or $XRELAY_CONFIG), "
                            "so there is no token cache to read")
        from xrelay.tokens import stored_status
        from xrelay.tokens.expiry import credential_expiries, expiry_warnings

        now = time.time()
        expiries = credential_expiries(config)
        statuses: list[dict[str, Any]] = [
                    {"account": s.account, "state": s.state, "provider": s.provider,
                     "flow": s.flow, "user": config.account(s.account).user,
                     "expires_at": s.expires_at, "last_refresh": s.last_refresh,
                     "last_error": s.last_error, "hint": s.hint,
                     "expiry_warnings": expiry_warnings(
                         [e for e in expiries if e.scope == "account"
                          and e.owner == s.account], now)}
                    for s in stored_status(config)]
        source = "token cache (--offline: as last recorded; the daemon was not asked)"
    else:
        try:
            statuses = ControlClient(config.server.state_dir, timeout=15).request("accounts")
        except DaemonNotRunning:
            return _problem("the relay is not running, so no account is delivering "
                            "(start it with `twistd xrelay` or `systemctl start xrelay`); "
                            "`xrelay accounts --offline` shows the states it last recorded")
        source = "daemon"
    if args.json:
        print(json.dumps(statuses, indent=1))
    else:
        print(f"# account states from the {source}")
        for s in statuses:
            line = (f"{s['account']}\t{s['state']}\t{s['provider']}/{s['flow']}\t"
                    f"{s['user']}\texpires {_when(s['expires_at'])}")
            if s.get("hint") and s["state"] not in USABLE:
                line += f"\t{s['hint']}"
            line += _account_state_text(s)
            if config.origin("accounts", s["account"]) is not None:
                line += f"\tfrom {_origin(config, 'accounts', s['account'])}"
            print(line)
            for warning in s.get("expiry_warnings") or ():
                print(f"# warning: {warning}")
    return EXIT_OK if all(s["state"] in USABLE and s.get("account_state", "ok") == "ok"
                          for s in statuses) else EXIT_PROBLEM


def _account_state_text(s: dict[str, Any]) -> str:
    """The provider state and the daily budget (from the daemon), tab-separated."""
    text = ""
    if s.get("account_state"):
        text += f"\taccount {s['account_state_label']}"
        if s["account_state"] != "ok" and s.get("held_fix"):
            text += f"\t{s['held_fix']}"
    if s.get("recipients_per_day"):
        text += (f"\trecipients today {s['recipients_today']}/{s['recipients_per_day']} "
                 f"({s['recipients_left']} left)")
    if s.get("held_senders"):
        text += f"\theld senders {', '.join(s['held_senders'])}"
    return text


# -- health ---------------------------------------------------------------------------


@command("health", "ask the running daemon whether it is healthy (listeners bound, "
         "spool writable with free space, no account failing past server.health_grace);"
         " exits 0 only when it is: for HEALTHCHECK and systemd", _json_argument)
@_guarded
def health_command(args: argparse.Namespace) -> int:
    config = config_from(args)
    try:
        report = ControlClient(config.server.state_dir, timeout=20).request("health")
    except DaemonNotRunning:
        report = {"healthy": False, "failed": ["daemon"], "checks": {"daemon": {
            "ok": False, "detail": "not running (nothing answers on "
            f"{config.server.state_dir}/control.sock)"}}}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print("healthy" if report["healthy"] else
              f"unhealthy: {', '.join(report['failed'])}")
        for name, check in report["checks"].items():
            detail = f": {check['detail']}" if check.get("detail") else ""
            print(f"{'ok' if check['ok'] else 'FAILED':<7}{name}{detail}")
    return EXIT_OK if report["healthy"] else EXIT_PROBLEM


# -- doctor ---------------------------------------------------------------------------


def _doctor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("account", help="the [[accounts]] name to diagnose")
    parser.add_argument("--script", action="store_true", help="print the PowerShell "
                        "script (ExchangeOnlineManagement) that sets up the tenant for "
                        "this account, instead of diagnosing")
    parser.add_argument("--send-as-check", action="store_true", help="send one test "
                        "message as each exact sender in the account's senders, to the "
                        "account's own mailbox")


@command("doctor", "walk one account's chain (configuration, authority and upstream "
         "reachability, token, XOAUTH2 login, a test message, Send As) and print each "
         "step ok / failed with the fix; exits 1 when a step failed", _doctor_arguments)
@_guarded
def doctor_command(args: argparse.Namespace) -> int:
    config = config_from(args)
    if config.path is None:
        return _problem("no configuration given (--config FILE or $XRELAY_CONFIG); "
                        "doctor diagnoses an account of a configuration")
    try:
        account = config.account(args.account)
    except KeyError:
        names = ", ".join(a.name for a in config.accounts) or "none"
        return _problem(f"no account {args.account!r}; the accounts are: {names}")
    from xrelay.operations.doctor import Doctor, powershell_script

    if args.script:
        print(powershell_script(account), end="")
        return EXIT_OK
    print(f"# xrelay doctor: account {account.name} ({account.provider}, {account.flow}, "
          f"{account.user})", flush=True)
    doctor = Doctor(config, account, send_as_check=args.send_as_check)
    for step in doctor.walk():
        for line in step.lines():
            print(line, flush=True)
    failed = [s.name for s in doctor.steps if s.ok is False]
    print(f"# {len(failed)} failed: {', '.join(failed)}" if failed else "# all steps ok")
    return EXIT_PROBLEM if failed else EXIT_OK


# -- login ----------------------------------------------------------------------------


def _login_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("account", help="the [[accounts]] name to sign in")


@command("login", "sign an account in with a device code: prints a URL and a code to "
         "enter there, waits, and stores the tokens for the daemon", _login_arguments)
@_guarded
def login_command(args: argparse.Namespace) -> int:
    config = config_from(args)
    try:
        account = config.account(args.account)
    except KeyError:
        names = ", ".join(a.name for a in config.accounts) or "none"
        return _problem(f"no account {args.account!r}; the accounts are: {names}")
    if account.provider != "microsoft" or account.flow == "client_credentials":
        return _problem(f"account {account.name!r} ({account.provider}, {account.flow}) "
                        "does not sign in interactively; nothing to do")
    from twisted.internet import task

    outcome: list[int] = []

    async def sign_in(reactor: Any) -> None:
        from xrelay.tokens import SignInFailed, TokenService

        tokens = TokenService(config, reactor=reactor)
        try:
            prompt = await tokens.start_device_code(account.name)
            print(prompt.message, flush=True)
            print(f"URL: {prompt.verification_uri}", flush=True)
            print(f"Code: {prompt.user_code}", flush=True)
            status = await tokens.finish_device_code(prompt)
            print(f"Signed in: account {account.name} is {status.state}.", flush=True)
            outcome.append(EXIT_OK)
        except SignInFailed as e:
            outcome.append(_problem(str(e)))
        finally:
            await tokens.run_stop()

    try:
        task.react(lambda reactor: defer.ensureDeferred(sign_in(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            return _problem("sign-in did not complete")
    return outcome[0] if outcome else EXIT_PROBLEM


# -- queue ----------------------------------------------------------------------------


ACTIONS = ("list", "show", "retry", "delete", "bounce")


def _queue_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS, help="list | show ID | retry ID | "
                        "retry --all | delete ID | bounce ID")
    parser.add_argument("id", nargs="?", help="the entry id (from `xrelay queue list`)")
    parser.add_argument("--all", action="store_true", help="with retry: every waiting entry")
    parser.add_argument("--state", choices=("queued", "active", "deferred", "failed",
                                             "corrupt"),
                        help="with list: only entries in this state")
    _json_argument(parser)


@command("queue", "look at and act on queued mail; safe while the daemon runs",
         _queue_arguments)
@_guarded
def queue_command(args: argparse.Namespace) -> int:
    if args.action == "list":
        if args.id:
            return _usage("queue list takes no id")
    elif args.action == "retry" and args.all:
        if args.id:
            return _usage("give either an id or --all, not both")
    elif not args.id:
        return _usage(f"queue {args.action} needs an entry id")
    if args.all and args.action != "retry":
        return _usage("--all goes with retry only")
    config = config_from(args)
    if args.action == "list":
        entries = _ask(config, "queue.list", state=args.state)
        if args.json:
            print(json.dumps(entries, indent=1))
        else:
            for e in entries:
                last = f"\tlast: {e['last_reply']}" if e["last_reply"] else ""
                if e.get("problem"):
                    last += f"\tproblem: {e['problem']}"
                print(f"{e['id']}\t{e['state']}\t{e['attempts']} attempts\t<{e['sender']}> "
                      f"-> {', '.join(e['recipients']) or '-'}{last}")
            print(f"# {len(entries)} entries")
        return EXIT_OK
    if args.action == "show":
        entry = _ask(config, "queue.show", id=args.id)
        if args.json:
            print(json.dumps(entry, indent=1))
        else:
            for key in ("id", "state", "sender", "recipients", "account", "size",
                        "attempts", "last_reply", "failed_recipients", "client_address"):
                print(f"{key}: {entry[key]}")
            if entry.get("problem"):
                print(f"problem: {entry['problem']}")
            print(f"received: {_when(entry['received_at'])}")
            print(f"next attempt: {_when(entry['next_attempt'])}")
            print("")
            print(entry["headers"])
        return EXIT_OK
    if args.action == "retry" and args.all:
        count = _ask(config, "queue.retry_all")
        print(f"{count} entries due now")
        return EXIT_OK
    entry = _ask(config, f"queue.{args.action}", id=args.id)
    verb = {"retry": "due now", "delete": "deleted", "bounce": "bounced to its sender"}
    print(f"{entry['id']}: {verb[args.action]}")
    return EXIT_OK


def _usage(text: str) -> int:
    print(f"xrelay: {text}", file=sys.stderr)
    return EXIT_USAGE


# -- send-test ------------------------------------------------------------------------


def _send_test_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--to", required=True, metavar="ADDR", help="recipient")
    parser.add_argument("--account", metavar="NAME", help="the upstream account to "
                        "send through (default: relay.default_account, else the first)")


@command("send-test", "send a test message through the running relay and print the "
         "upstream's reply; exits 1 unless it was delivered", _send_test_arguments)
@_guarded
def send_test_command(args: argparse.Namespace) -> int:
    config = config_from(args)
    try:
        result = ControlClient(config.server.state_dir, timeout=120).request(
            "send-test", to=args.to, account=args.account)
    except DaemonNotRunning:
        return _problem("the relay is not running (start it with `twistd xrelay` or "
                        "`systemctl start xrelay`); send-test goes through it")
    print(f"{result['entry_id']}: {result['outcome']} via {result['account']} as "
          f"<{result['sender']}>: {result['reply']}")
    if result.get("detail"):
        print(result["detail"])
    return EXIT_OK if result["outcome"] == "delivered" else EXIT_PROBLEM


# -- reload ---------------------------------------------------------------------------


@command("reload", "make the running daemon re-read its configuration (like SIGHUP), "
         "and say whether it took it")
@_guarded
def reload_command(args: argparse.Namespace) -> int:
    config = config_from(args)
    try:
        ControlClient(config.server.state_dir).request("reload")
    except DaemonNotRunning:
        return _problem("the relay is not running; nothing to reload")
    print("configuration reloaded")
    return EXIT_OK
