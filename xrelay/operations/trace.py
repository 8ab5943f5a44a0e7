"""
C{xrelay trace}: the message trace on the command line ("did my scan go out?").

C{xrelay trace [--from PATTERN] [--to PATTERN] [--subject TEXT] [--since 2h|DATE]
[--status delivered|failed|waiting] [--json]} prints one line per message, newest first:
time received, sender, recipients, outcome and the last upstream reply.  C{xrelay trace
ID} tells one message's whole story: received, each attempt, the bounce sent and where.

It reads C{state_dir/history.sqlite} read-only, so it works the same with the daemon
running or stopped, and never asks the daemon anything.  Exit status: 0 (also when
nothing matched: an empty answer is an answer), 1 the history cannot be read or the
entry is unknown, 2 a usage mistake.
"""

from __future__ import annotations

import argparse
import json
import sys

from xrelay.subcommands import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, command, config_from
from xrelay.history import (HistoryMissing, MessageStory, MessageTrace, TraceQuery,
                            history_path, parse_since, search, story)
from xrelay.history.query import local_time
from xrelay.history.records import STATUS_GROUPS


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", nargs="?", help="an entry id: the whole story of that message")
    parser.add_argument("--from", dest="sender", metavar="PATTERN",
                        help="envelope sender: text it contains, or a pattern "
                        "(*@example.com)")
    parser.add_argument("--to", dest="recipient", metavar="PATTERN",
                        help="a recipient: text it contains, or a pattern")
    parser.add_argument("--subject", metavar="TEXT", help="text the Subject: contains")
    parser.add_argument("--client", metavar="ADDRESS",
                        help="the client's address, exactly (a device's messages)")
    parser.add_argument("--since", metavar="WHEN", help="received since: 30m, 2h, 3d, 1w, "
                        "or a local date (2026-12-01, '2026-12-01 14:30')")
    parser.add_argument("--status", choices=tuple(STATUS_GROUPS),
                        help="delivered, failed (bounced, expired, handed back, deleted) "
                        "or waiting")
    parser.add_argument("--limit", type=int, default=200, metavar="N",
                        help="at most this many messages, newest first (default 200)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _problem(text: str, code: int = EXIT_PROBLEM) -> int:
    print(f"xrelay: {text}", file=sys.stderr)
    return code


@command("trace", "the message trace: what happened to each message (did it send?); "
         "works with the daemon running or stopped", _arguments)
def trace_command(args: argparse.Namespace) -> int:
    config = config_from(args)
    path = history_path(config.server.state_dir)
    try:
        if args.id:
            if any((args.sender, args.recipient, args.subject, args.since, args.status,
                    args.client)):
                return _problem("give either an entry id or search options, not both",
                                EXIT_USAGE)
            found = story(path, args.id)
            if found is None:
                return _problem(f"the trace knows no message {args.id} (older than "
                                f"delivery.history_days = {config.delivery.history_days}, "
                                "or a mistyped id; search with --from/--to/--since)")
            if args.json:
                print(json.dumps(found.as_json(), indent=1))
            else:
                print("\n".join(story_lines(found)))
            return EXIT_OK
        try:
            since = parse_since(args.since) if args.since else None
        except ValueError as e:
            return _problem(str(e), EXIT_USAGE)
        query = TraceQuery(sender=args.sender, recipient=args.recipient,
                           subject=args.subject, since=since, status=args.status,
                           limit=args.limit, client=args.client)
        messages = search(path, query)
    except HistoryMissing as e:
        return _problem(str(e))
    if args.json:
        print(json.dumps([m.as_json() for m in messages], indent=1))
    else:
        for m in messages:
            print(summary_line(m))
        print(f"# {len(messages)} messages")
    return EXIT_OK


def summary_line(m: MessageTrace) -> str:
    """One message in one line: when, who, to whom, how it ended, what upstream said."""
    return (f"{local_time(m.received_at)}\t{m.entry_id}\t<{m.sender or ''}> -> "
            f"{', '.join(m.recipients) or '-'}\t{m.outcome}\t{m.last_reply or '-'}")


def story_lines(s: MessageStory) -> list[str]:
    """The whole story of one message, oldest event first."""
    m = s.message
    lines = [f"message {m.entry_id}: {m.outcome}",
             f"  received {local_time(m.received_at)} from {m.client or '-'}"
             f"{' user ' + m.user if m.user else ''}, {m.size if m.size is not None else '-'}"
             f" bytes, account {m.account or '-'}",
             f"  sender <{m.sender or ''}>",
             f"  recipients {', '.join(m.recipients) or '-'}",
             f"  subject {m.subject if m.subject is not None else '-'}",
             f"  message-id {m.message_id or '-'}"]
    for number, a in enumerate(s.attempts, 1):
        lines.append(f"attempt {number} at {local_time(a.at)} via {a.account or '-'}: "
                     f"{a.outcome}")
        for recipient, outcome, reply in a.recipients:
            lines.append(f"  {recipient}: {outcome}: {reply}")
        if a.upstream_id:
            lines.append(f"  upstream message id {a.upstream_id} (look it up in the "
                         "provider's message trace)")
    if not s.attempts:
        lines.append("no delivery attempt yet")
    for bounce, _attempts in s.bounces:
        lines.append(f"bounce {bounce.entry_id} sent {local_time(bounce.received_at)} to "
                     f"{', '.join(bounce.recipients)}: {bounce.outcome}"
                     f"{'; ' + bounce.last_reply if bounce.last_reply else ''}")
    if m.finished_at:
        lines.append(f"finished {local_time(m.finished_at)}: {m.outcome}")
    return lines
