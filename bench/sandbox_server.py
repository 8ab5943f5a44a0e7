"""
The sandbox upstream as a process of its own for the benchmarks, with Exchange
Online's sending limits switched off so that the relay, not the stand-in, is measured.

    python bench/sandbox_server.py DIRECTORY INFO.json

Writes INFO.json ({"directory": ..., "account": {...}}) once it listens.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.internet import reactor
from twisted.python.filepath import FilePath

from xrelay.sandbox import Sandbox


def main() -> None:
    directory, info = sys.argv[1], sys.argv[2]
    os.makedirs(directory, exist_ok=True)
    sandbox = Sandbox(FilePath(directory), reactor=reactor)
    sandbox.exchange.messages_per_minute = 0
    sandbox.exchange.max_message_size = 200 * 1024 * 1024
    sandbox.start()
    tmp = info + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"directory": directory, "account": sandbox.default_account()}, f)
    os.rename(tmp, info)
    reactor.run()


if __name__ == "__main__":
    main()
