"""
C{xrelay run}: the daemon in the foreground, exactly as C{twistd -n --pidfile= xrelay}.

For people who installed with C{pipx} (which exposes C{xrelay} but not C{twistd}) and
for the container image, whose supervisor wants one foreground process logging to
standard output.  The log format is C{text} (twistd's) or C{json}, one JSON object per
line with every field of the event, chosen with C{--log-format} or
C{$XRELAY_LOG_FORMAT}.  This module must not import the reactor: twistd chooses it.
"""

from __future__ import annotations

import argparse
import os
import sys

from twisted.logger import ILogObserver, jsonFileLogObserver

from xrelay.subcommands import EXIT_OK, EXIT_USAGE, command

LOG_FORMAT_VARIABLE = "XRELAY_LOG_FORMAT"
LOG_FORMATS = ("text", "json")


def json_observer() -> ILogObserver:
    """
    twistd's C{--logger}: JSON lines on standard output.  No RFC 7464 record separator,
    so that container log collectors see one plain JSON document per line
    (C{twisted.logger.eventsFromJSONLogFile} reads both forms).
    """
    return jsonFileLogObserver(sys.stdout, recordSeparator="")


def twistd_arguments(config: str | None, log_format: str) -> list[str]:
    """The twistd command line that C{xrelay run} stands for."""
    argv = ["twistd", "--nodaemon", "--pidfile="]
    if log_format == "json":
        argv += ["--logger", f"{__name__}.json_observer"]
    argv.append("xrelay")
    if config:
        argv += ["--config", config]
    return argv


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=LOG_FORMATS, default=None,
                        help=f"text (default) or json lines on standard output "
                        f"(default: ${LOG_FORMAT_VARIABLE}, else text)")


@command("run", "run the relay in the foreground, the same as `twistd -n --pidfile= "
         "xrelay`; logs to standard output", _run_arguments)
def run(args: argparse.Namespace) -> int:
    log_format = args.log_format or os.environ.get(LOG_FORMAT_VARIABLE) or "text"
    if log_format not in LOG_FORMATS:
        print(f"xrelay: ${LOG_FORMAT_VARIABLE}={log_format!r}: write one of "
              f"{', '.join(LOG_FORMATS)}", file=sys.stderr)
        return EXIT_USAGE
    from twisted.scripts.twistd import run as twistd

    sys.argv = twistd_arguments(args.config, log_format)
    twistd()
    return EXIT_OK
