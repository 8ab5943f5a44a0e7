"""
The C{xrelay} command: what an administrator runs beside the daemon.

Each subcommand finds the configuration as the daemon does (C{--config FILE}, else
C{$XRELAY_CONFIG}, else C{/etc/xrelay/xrelay.toml}) and exits with a status a script can
rely on: 0 success, 1 a problem the message names (configuration, sign-in, queue), 2 a
usage mistake.  Nothing here prints a secret: secrets are masked in C{check-config}, and
C{hash-password} never echoes the password.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Sequence

import attrs

from xrelay import __version__
from xrelay.config import Config, ConfigError
from xrelay.configfile import read_config
from xrelay.passwords import hash_password
from xrelay.subcommands import (EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, command, config_from,
                                origin_of, registered)

# The registry and exit statuses are below the operator modules that register
# subcommands (xrelay.subcommands); their names stay importable from here.
__all__ = ["EXIT_OK", "EXIT_PROBLEM", "EXIT_USAGE", "build_parser", "command",
           "config_from", "describe", "main"]


# -- check-config ----------------------------------------------------------------


def _check_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", help="the file to check (default: --config, "
                        "$XRELAY_CONFIG, /etc/xrelay/xrelay.toml)")
    parser.add_argument("--as-user", metavar="USER", help="also read it as this user "
                        "(default when run as root: the service user xrelay, if it exists)")


@command("check-config", "validate a configuration file and print the effective "
         "settings, secrets masked", _check_config_arguments)
def check_config(args: argparse.Namespace) -> int:
    from xrelay.checks import problems, warnings

    config = read_config(args.file) if args.file else config_from(args)
    from xrelay.serviceuser import check_as, checking_user

    if (user := checking_user(args.as_user)) is not None and config.path is not None:
        check_as(user, config.path)
        print(f"# {config.path}: readable by the service user {user.pw_name}")
    refusals = problems(config)
    for line in refusals:
        print(f"xrelay: {line}", file=sys.stderr)
    if refusals:
        return EXIT_PROBLEM
    print(f"# {config.path or 'sandbox default (no configuration file)'}: OK")
    for warning in warnings(config):
        print(f"# warning: {warning}")
    for line in describe(config):
        print(line)
    return EXIT_OK


def describe(config: Config) -> list[str]:
    """
    The effective settings as TOML-like lines.  Password hashes are masked; secret
    files are shown by path only (their contents are never read here).
    """
    lines = ["[server]"]
    server = attrs.asdict(config.server, recurse=False)
    server["listen"] = [{k: v for k, v in attrs.asdict(listener).items() if v is not None}
                        for listener in config.server.listen]
    lines += [_setting(k, v) for k, v in server.items()]
    lines += ["", "[relay]",
              f"allow_networks = {_toml([str(n) for n in config.relay.allow_networks])}",
              f"senders = {_toml([p.text for p in config.relay.senders])}",
              _setting("default_account", config.relay.default_account),
              _setting("bare_lf_end_of_data", config.relay.bare_lf_end_of_data)
              + ('  # a "." line with bare LF ends DATA for allow_networks: a host there '
                 "that forwards content others wrote (a web form, an old MTA) belongs on "
                 'a listener with bare_lf_end_of_data = "never"'
                 if config.relay.bare_lf_end_of_data == "trusted" else "")]
    for user in config.users:
        lines += ["", "[[users]]", f"# from {origin_of(config, 'users', user.name)}",
                  f"name = {_toml(user.name)}",
                  'password_hash = "<masked>"',
                  f"senders = {_toml([p.text for p in user.senders])}"]
    for account in config.accounts:
        lines += ["", "[[accounts]]", f"# from {origin_of(config, 'accounts', account.name)}"]
        for key, value in attrs.asdict(account, recurse=False).items():
            if key == "senders":
                value = [p.text for p in value]
            lines.append(_setting(key, value))
    lines += ["", "[delivery]"]
    lines += [_setting(k, v) for k, v in attrs.asdict(config.delivery).items()]
    if config.admin is not None:
        lines += ["", "[admin]", f"listen = {_toml(config.admin.listen)}",
                  'password_hash = "<masked>"',
                  _setting("public_url", config.admin.public_url)]
    lines += ["", "[setup]"]
    lines += [_setting(k, v) for k, v in attrs.asdict(config.setup).items()]
    return lines


def _setting(key: str, value: object) -> str:
    if value is None:
        return f"# {key} is not set"
    return f"{key} = {_toml(value)}"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


# -- hash-password ----------------------------------------------------------------


@command("hash-password", "print a password hash for [[users]] or [admin]; reads the "
         "password from standard input when it is not a terminal")
def hash_password_command(args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("xrelay: the two passwords differ; nothing printed", file=sys.stderr)
            return EXIT_PROBLEM
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("xrelay: empty password; nothing printed", file=sys.stderr)
        return EXIT_PROBLEM
    print(hash_password(password))
    return EXIT_OK


# -- entry point ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    _load_command_modules()
    parser = argparse.ArgumentParser(
        prog="xrelay",
        description="Administer the xrelay SMTP relay (the daemon runs as `twistd xrelay`).",
    )
    parser.add_argument("--version", action="version", version=f"xrelay {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help, arguments, run) in sorted(registered().items()):
        child = sub.add_parser(name, help=help, description=help)
        child.add_argument("--config", "-c", metavar="FILE", help="configuration file "
                           "(default: $XRELAY_CONFIG, then /etc/xrelay/xrelay.toml)")
        arguments(child)
        child.set_defaults(run=run)
    return parser


def _load_command_modules() -> None:
    """Import the modules that register more subcommands (operations, sign-in)."""
    import xrelay.foreground  # noqa: F401
    import xrelay.operations.commands  # noqa: F401
    import xrelay.operations.devices  # noqa: F401
    import xrelay.operations.makecert  # noqa: F401
    import xrelay.operations.trace  # noqa: F401
    import xrelay.setup.command  # noqa: F401


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as e:
        print(f"xrelay: {e}", file=sys.stderr)
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        return EXIT_PROBLEM
    except BrokenPipeError:
        # `xrelay queue list | head`: the reader left; that is not an error.
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
