"""
Per turn of an SMTP conversation through C{delayproxy.py}, how long each side took,
from the proxy's trace (C{DELAYPROXY_TRACE}): the server from the client's last byte
(plus the one-way delay) to its reply, the client from the reply (plus the delay) to
its next message.  Only turns that carry a message (more than C{--min-bytes} from the
client) are counted.  Each figure includes one hop through the proxy.

    DELAYPROXY_TRACE=/var/tmp/trace .venv/bin/python bench/delivery_path.py --delay-ms 20
    .venv/bin/python bench/turns.py --delay-ms 20 /var/tmp/trace.*
"""

from __future__ import annotations

import argparse
import collections
import statistics


def turns(path: str, delay: float, min_bytes: int) -> dict[str, list[float]]:
    chunks: dict[str, list[tuple[str, float, int]]] = collections.defaultdict(list)
    with open(path) as f:
        for line in f:
            connection, side, at, size = line.split()
            chunks[connection].append((side, float(at), int(size)))
    took: dict[str, list[float]] = {"server": [], "client": []}
    for events in chunks.values():
        # One turn: (side, its bytes, its last chunk's arrival), consecutive chunks of a
        # side merged.
        merged: list[tuple[str, int, float, float]] = []
        for side, at, size in events:
            if merged and merged[-1][0] == side:
                merged[-1] = (side, merged[-1][1] + size, merged[-1][2], at)
            else:
                merged.append((side, size, at, at))
        for before, after in zip(merged, merged[1:], strict=False):
            if before[0] == "C" and after[0] == "S" and before[1] > min_bytes:
                took["server"].append((after[2] - before[3] - delay) * 1000)
            if before[0] == "S" and after[0] == "C" and after[1] > min_bytes:
                took["client"].append((after[2] - before[3] - delay) * 1000)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay-ms", type=float, default=20.0, help="each way")
    parser.add_argument("--min-bytes", type=int, default=5000)
    parser.add_argument("traces", nargs="+")
    args = parser.parse_args()
    for path in args.traces:
        took = turns(path, args.delay_ms / 1000, args.min_bytes)
        for side, values in took.items():
            if values:
                values.sort()
                print(f"{path} {side}: {len(values)} turns, p50 "
                      f"{statistics.median(values):.2f} ms, p90 "
                      f"{values[int(len(values) * 0.9)]:.2f} ms")


if __name__ == "__main__":
    main()
