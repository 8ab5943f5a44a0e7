"""
C{xrelay setup}: the terminal face of the setup engine.

C{xrelay setup microsoft --mailbox ADDRESS [--method graph|smtp|delegated] [--name NAME]
[--senders PATTERN ...] [--secret] [--large-messages] [--yes]} shows the plan, asks,
signs the admin in with a device code (the code and its link printed here), runs
L{xrelay.setup.engine.SetupEngine}, and ends with a test message to the mailbox through
the running relay and C{xrelay doctor}'s checks.  C{xrelay setup rotate NAME} replaces
an account's certificate (L{xrelay.setup.rotate}).  Exit status: 0 done, 1 the setup
stopped (one line says why and what to do), 2 a usage mistake.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from xrelay.cli import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, command, config_from
from xrelay.config import Config
from xrelay.setup.plan import METHODS, BadRequest, SetupRefused, SetupRequest, make_plan


def _arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="setup_command", metavar="microsoft|rotate",
                                required=True)
    ms = sub.add_parser("microsoft", help="set up a Microsoft 365 mailbox: app "
                        "registration, permissions, credential, Exchange, account")
    ms.add_argument("--mailbox", required=True, metavar="ADDRESS",
                    help="the mailbox the relay sends from")
    ms.add_argument("--method", choices=METHODS, default="smtp",
                    help="smtp: SMTP AUTH as an app (default); graph: Graph sendMail as "
                    "an app; delegated: SMTP AUTH as the mailbox's user")
    ms.add_argument("--name", help="the account's name (default: the mailbox's local part)")
    ms.add_argument("--senders", nargs="+", default=[], metavar="PATTERN",
                    help="sender patterns routed to this account (default: the mailbox)")
    ms.add_argument("--secret", action="store_true", help="a client secret instead of a "
                    "certificate made on this host")
    ms.add_argument("--large-messages", action="store_true", help="graph: also ask for "
                    "Mail.ReadWrite, which Graph needs for messages over 3 MB")
    ms.add_argument("--yes", "-y", action="store_true", help="do not ask before starting")
    rotate = sub.add_parser("rotate", help="replace an account's certificate with a new "
                            "one made here, without stopping mail")
    rotate.add_argument("account", help="the account's name")
    rotate.add_argument("--yes", "-y", action="store_true", help="do not ask first")


def say(line: str) -> None:
    print(line, flush=True)


def _problem(text: str) -> int:
    print(f"xrelay: setup stopped: {text}", file=sys.stderr, flush=True)
    return EXIT_PROBLEM


def _confirm(args: argparse.Namespace) -> bool:
    if args.yes:
        return True
    if not sys.stdin.isatty():
        print("xrelay: not a terminal: pass --yes to go ahead", file=sys.stderr)
        return False
    answer = input("Go ahead and sign in? [y/N] ").strip().lower()
    return answer in ("y", "yes")


def _poll_interval(config: Config) -> float:
    """Seconds between checks while waiting: the sandbox answers in seconds."""
    sandbox = config.sandbox_dir is not None or config.setup.ca_file is not None
    return 1.0 if sandbox else 10.0


def _sign_in(config: Config) -> Any:
    from xrelay.setup.signin import AdminSignIn
    from xrelay.tokens.trust import trust_bundle

    bundle = trust_bundle(config.server.state_dir, config.setup.ca_file)
    signin = AdminSignIn(config.setup, bundle)
    flow = signin.start_device()
    say("")
    say("Sign in as an administrator of the tenant:")
    say(f"  open   {flow['verification_uri']}")
    say(f"  enter  {flow['user_code']}")
    say(f"Waiting for the sign-in (the code works for {int(flow.get('expires_in', 900)) // 60}"
        " minutes)...")
    return bundle, signin.finish_device(flow)


@command("setup", "set up a Microsoft 365 account from one admin sign-in (`setup "
         "microsoft --mailbox ADDRESS`), or rotate its certificate (`setup rotate NAME`)",
         _arguments)
def setup_command(args: argparse.Namespace) -> int:
    try:
        if args.setup_command == "rotate":
            return _rotate(args)
        return _microsoft(args)
    except SetupRefused as e:
        return _problem(str(e))
    except BadRequest as e:
        print(f"xrelay: {e}", file=sys.stderr)
        return EXIT_USAGE


def _microsoft(args: argparse.Namespace) -> int:
    from xrelay.setup.engine import SetupEngine

    config = config_from(args)
    request = SetupRequest(args.mailbox, args.method, args.name, tuple(args.senders),
                           "secret" if args.secret else "certificate", args.large_messages)
    plan = make_plan(request, config.setup, config.server.hostname)
    say("xrelay setup will do this:")
    for line in plan.lines():
        say(f"  {line}")
    if not _confirm(args):
        return _problem("nothing was done (not confirmed)")
    bundle, admin = _sign_in(config)
    engine = SetupEngine(config, plan, say, bundle, current_config=lambda: config_from(args),
                         poll_interval=_poll_interval(config))
    result = engine.run(admin)
    say(f"Account {result.account} is set up (app {result.app_id}).")
    if result.needs_user_sign_in:
        say(f"Now {request.mailbox}'s user signs in once (device code):")
        from xrelay.operations.commands import login_command

        if login_command(argparse.Namespace(config=args.config, account=result.account)):
            return _problem(f"the mailbox's sign-in did not complete; run `xrelay login "
                            f"{result.account}` again")
    return _final_checks(args, result.account, request.mailbox)


def _final_checks(args: argparse.Namespace, name: str, mailbox: str) -> int:
    """A test message to the mailbox through the relay, then doctor's checks."""
    from xrelay.operations.control import ControlClient, ControlRefusal, DaemonNotRunning
    from xrelay.operations.doctor import Doctor

    config = config_from(args)
    delivered = False
    try:
        result = ControlClient(config.server.state_dir, timeout=120).request(
            "send-test", to=mailbox, account=name)
        delivered = result["outcome"] == "delivered"
        say(f"Test message to {mailbox}: {result['outcome']} ({result['reply']}).")
    except DaemonNotRunning:
        say("Test message: not sent, the relay is not running; start it (`systemctl start "
            "xrelay` or `twistd xrelay`) and run `xrelay send-test --to "
            f"{mailbox} --account {name}`.")
    except ControlRefusal as e:
        say(f"Test message: not sent: {e}")
    say(f"xrelay doctor {name}:")
    steps = Doctor(config, config.account(name)).run()
    for step in steps:
        for line in step.lines():
            say(f"  {line}")
    failed = [s for s in steps if s.ok is False]
    if failed or not delivered:
        return EXIT_PROBLEM
    say("Done: the relay delivers through this account.")
    return EXIT_OK


def _rotate(args: argparse.Namespace) -> int:
    from xrelay.setup.rotate import CertificateRotation, rotatable

    config = config_from(args)
    account = rotatable(config, args.account)
    say(f"xrelay setup rotate {account.name}: a new certificate made here is added to app "
        f"{account.client_id}; the relay switches to it once Entra ID accepts it; the old "
        "one is then removed from the app. Mail keeps flowing.")
    if not _confirm(args):
        return _problem("nothing was done (not confirmed)")
    bundle, admin = _sign_in(config)
    rotation = CertificateRotation(config, account, say, bundle,
                                   current_config=lambda: config_from(args),
                                   poll_interval=_poll_interval(config))
    rotation.run(admin)
    say(f"Rotated: account {account.name} uses the new certificate.")
    return EXIT_OK
