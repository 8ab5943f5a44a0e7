"""
The spool's group commit alone, without SMTP: how many 10 KB messages per second
L{xrelay.spool.Spool} makes durable with C{concurrency} messages always waiting, and how
many commits (fsync batches) that took.  Also the machine's floor for the same work done
by C{concurrency} independent writers (each: write, fsync, rename, fsync the folder),
which is what "the fsync-bound floor with group commit" means on this disk.

    .venv/bin/python bench/spool_commit.py [--concurrency 100] [--messages 2000]

Prints one JSON object.  Used by C{bench/run.py} too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def concurrent_fsync_floor(folder: Path, writers: int, count: int,
                           size: int = 10240) -> dict[str, Any]:
    """
    C{writers} threads, each writing its share of C{count} files the durable way
    (write + fsync(file) + rename + fsync(dir)): the most an fsync-per-message server
    gets from this disk when its writes overlap (the journal merges concurrent fsyncs).
    """
    data = os.urandom(size)
    folder.mkdir(parents=True, exist_ok=True)

    def writer(number: int) -> None:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            for i in range(number, count, writers):
                tmp = folder / f"{i}.tmp"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
                os.write(fd, data)
                os.fsync(fd)
                os.close(fd)
                os.rename(tmp, folder / f"{i}.eml")
                os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    shutil.rmtree(folder)
    return {"writers": writers, "files": count,
            "files_per_second": round(count / elapsed, 1)}


def spool_commit_rate(folder: Path, concurrency: int, count: int,
                      size: int = 10240) -> dict[str, Any]:
    """
    Drive a real L{Spool} on the real reactor: C{concurrency} messages in flight, each
    written in one piece and committed; a new one starts when one is acknowledged.
    """
    from twisted.internet import defer, reactor

    from xrelay.envelope import Envelope
    from xrelay.spool import Spool

    spool = Spool(str(folder), reactor=reactor)
    payload = os.urandom(size)
    envelope = Envelope(sender="bench@example.com", recipients=("sink@example.net",),
                        client_address="127.0.0.1", client_helo="bench", account="bench",
                        received_at=time.time())
    state = {"started": 0, "done": 0}
    finished: defer.Deferred[None] = defer.Deferred()

    def one() -> None:
        if state["started"] >= count:
            return
        state["started"] += 1
        incoming = spool.incoming(envelope)
        incoming.write(payload)
        incoming.commit().addCallback(acknowledged)

    def acknowledged(_: object) -> None:
        state["done"] += 1
        if state["done"] == count:
            finished.callback(None)
        else:
            one()

    start = time.perf_counter()
    for _ in range(concurrency):
        one()
    result: dict[str, Any] = {}

    def stop(_: object) -> None:
        elapsed = time.perf_counter() - start
        result.update(concurrency=concurrency, messages=count,
                      messages_per_second=round(count / elapsed, 1),
                      commit_batches=spool.commit_batches,
                      messages_per_batch=round(spool.committed_messages
                                               / max(spool.commit_batches, 1), 1))
        reactor.stop()

    finished.addCallback(stop)
    reactor.run()
    shutil.rmtree(folder)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--dir", default="/var/tmp", help="on the disk under test (not tmpfs)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="xrelay-spool-bench-", dir=args.dir))
    floor = concurrent_fsync_floor(work / "floor", args.concurrency, args.messages)
    spool = spool_commit_rate(work / "spool", args.concurrency, args.messages)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"floor_concurrent_fsync": floor, "spool": spool}))


if __name__ == "__main__":
    main()
