"""
What the device inventory costs: CPU on the reactor thread per event (the only part in
the path of a reply), a batched write in its thread, the file at the cap, and reading
the inventory with the delivered/bounced counts from a large message trace (what
C{xrelay devices} and the Devices page do).

    .venv/bin/python -u bench/devices_cost.py [--events 100000] [--history 200000]

Prints one line per figure, then one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet import defer, reactor  # noqa: E402

from xrelay.config import Config, ServerConfig  # noqa: E402
from xrelay.devices import DeviceCollector, read_devices  # noqa: E402
from xrelay.devices.store import MAX_DEVICES  # noqa: E402
from xrelay.history.store import SCHEMA as HISTORY_SCHEMA  # noqa: E402


@attrs.define
class _Listener:
    endpoint: str = "tcp:2525"


@attrs.define
class _Factory:
    listener: _Listener = attrs.field(factory=_Listener)


@attrs.define
class Session:
    """What the collector reads of an inbound protocol (a plain-text session)."""

    client_address: str
    helo: str | None = "printer.lan"
    user: Any = None
    tls: bool = False
    factory: _Factory = attrs.field(factory=_Factory)


@defer.inlineCallbacks
def measure(args: argparse.Namespace, out: dict[str, Any]) -> Any:
    directory = tempfile.mkdtemp(dir=args.dir)
    config = Config(server=ServerConfig(state_dir=directory))
    collector = DeviceCollector(lambda: config, reactor)
    collector.startService()
    sessions = [Session(f"192.168.{i // 256}.{i % 256}") for i in range(200)]
    started = time.process_time()
    for i in range(args.events):
        collector.accepted(sessions[i % len(sessions)], "printer@example.com")
    out["event_us"] = (time.process_time() - started) / args.events * 1e6
    print(f"accepted() on the reactor thread: {out['event_us']:.1f} us CPU per event "
          f"({len(sessions)} devices)")
    yield collector.flush()
    batches = MAX_DEVICES // 1000
    started = time.perf_counter()
    for batch in range(batches):
        for i in range(1000):
            collector.refused(Session(f"10.{batch}.{i // 256}.{i % 256}"), "mail", 550,
                              "5.7.1", "Relaying denied " + "x" * 180)
        yield collector.flush()
    out["batch_ms"] = (time.perf_counter() - started) / batches * 1000
    print(f"writing 1000 new devices in one batch (its thread): {out['batch_ms']:.0f} ms")
    yield collector.stopService()
    out["file_kib"] = os.path.getsize(collector.path) // 1024
    print(f"devices.sqlite at the cap ({MAX_DEVICES} devices): {out['file_kib']} KiB")

    history = os.path.join(directory, "history.sqlite")
    db = sqlite3.connect(history)
    db.executescript(HISTORY_SCHEMA)
    db.executemany("INSERT INTO message (entry_id, received_at, client, user, status) "
                   "VALUES (?, 0, ?, NULL, ?)",
                   [(f"e{i}", f"10.{i % 5}.{i % 4}.{i % 250}",
                     "delivered" if i % 7 else "bounced") for i in range(args.history)])
    db.commit()
    db.close()
    started = time.perf_counter()
    devices = read_devices(collector.path, history)
    out["read_ms"] = (time.perf_counter() - started) * 1000
    print(f"reading {len(devices)} devices with the counts from a {args.history}-message "
          f"trace: {out['read_ms']:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--history", type=int, default=200_000)
    parser.add_argument("--dir", default="/var/tmp",
                        help="where the files go (not a tmpfs, where fsync is free)")
    args = parser.parse_args()
    out: dict[str, Any] = {}

    def run() -> None:
        d = measure(args, out)
        d.addErrback(lambda f: (f.printTraceback(), out.setdefault("error", str(f))))
        d.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]

    reactor.callWhenRunning(run)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
