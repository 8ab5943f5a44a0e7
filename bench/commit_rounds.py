"""
What a spool layout costs in fsync rounds, measured on this disk without SMTP or Python
protocol work: C{--concurrency} clients each waiting for their message to be durable
before sending the next, a group committer taking whatever waits.

- C{sink}: one fsync per message, appended to one file from a pool of 10 threads (what
  C{bench/sink.py --durable} does): the floor of issue 19;
- C{two_rounds}: today's layout (C{data/<id>.eml} + C{queued/<id>.json}): every file of
  the batch fsynced concurrently, both renamed, both folders fsynced concurrently;
- C{one_round}: a layout sketch, one file per message written in place in its state
  folder (envelope and data together, self-checking so that recovery can tell a torn
  one), the files and the folder fsynced in the same round;
- C{prepared_files}: the same, into files created (and their folder fsynced) ahead of
  time, so that a commit changes no names: only data is fsynced, as in the sink;
- C{prepared_pairs}: the layout chosen for the spool (issue 28): the data file and the
  record file both made ahead (C{data/<id>.eml}, C{queued/<id>.json}, folders fsynced
  ahead), a commit writes both and fdatasyncs both concurrently: one round, no name
  change, the data file left exactly as received;
- C{pairs_overlapped}: the same, but each message's two fdatasyncs are issued as it
  arrives, without waiting for the batch before it (a second batch commits while one
  syncs).

    .venv/bin/python bench/commit_rounds.py [--concurrency 20] [--messages 1000]

Prints one JSON object (messages per second per mode, alternating rounds).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

PAYLOAD = os.urandom(10240)
ENVELOPE = json.dumps({"sender": "bench@example.com", "recipients": ["sink@example.net"],
                       "size": len(PAYLOAD)}, indent=1).encode()
POOL = concurrent.futures.ThreadPoolExecutor(16)


def fsync_path(path: str, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(path: str, data: bytes, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def two_rounds(root: Path, ids: list[str]) -> None:
    def prepare(i: str) -> None:
        write(str(root / "tmp" / f"{i}.eml"), PAYLOAD, True)
        write(str(root / "tmp" / f"{i}.json"), ENVELOPE, True)

    list(POOL.map(prepare, ids))
    for i in ids:
        os.rename(root / "tmp" / f"{i}.eml", root / "data" / f"{i}.eml")
        os.rename(root / "tmp" / f"{i}.json", root / "queued" / f"{i}.json")
    list(POOL.map(fsync_path, [str(root / "data"), str(root / "queued")]))


def one_round(root: Path, ids: list[str]) -> None:
    def put(i: str) -> None:
        # Envelope, a blank line, the data: one file, named as the entry, in place.
        write(str(root / "queued" / f"{i}.msg"), ENVELOPE + b"\n\n" + PAYLOAD, True)

    jobs = [POOL.submit(put, i) for i in ids] + [POOL.submit(fsync_path, str(root / "queued"))]
    for job in jobs:
        job.result()


def prepared(root: Path, ids: list[str]) -> None:
    """Into files made (and their folder fsynced) ahead of time: no name changes."""
    def put(i: str) -> None:
        fd = os.open(str(root / "queued" / f"{i}.msg"), os.O_WRONLY)
        try:
            os.write(fd, ENVELOPE + b"\n\n" + PAYLOAD)
            os.fsync(fd)
        finally:
            os.close(fd)

    list(POOL.map(put, ids))


def prepared_pairs(root: Path, ids: list[str]) -> None:
    """Data and record both made ahead: write both, fdatasync both, one round."""
    def put(path: str, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, data)
            os.fdatasync(fd)
        finally:
            os.close(fd)

    jobs = [POOL.submit(put, str(root / "data" / f"{i}.eml"), PAYLOAD) for i in ids]
    jobs += [POOL.submit(put, str(root / "queued" / f"{i}.json"), ENVELOPE) for i in ids]
    for job in jobs:
        job.result()


def make_pairs(root: Path, count: int) -> None:
    for sub in ("data", "queued"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for n in range(count):
        os.close(os.open(str(root / "data" / f"m{n}.eml"), os.O_WRONLY | os.O_CREAT, 0o600))
        os.close(os.open(str(root / "queued" / f"m{n}.json"), os.O_WRONLY | os.O_CREAT,
                         0o600))
    fsync_path(str(root / "data"))
    fsync_path(str(root / "queued"))
    os.sync()


def overlapped_pairs(root: Path, clients: int, count: int) -> float:
    """Each message's two fdatasyncs issued at once, no batch boundary."""
    make_pairs(root, count)
    numbers = iter(range(count))

    def put(path: str, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, data)
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def client() -> None:
        for n in numbers:
            a = POOL.submit(put, str(root / "data" / f"m{n}.eml"), PAYLOAD)
            b = POOL.submit(put, str(root / "queued" / f"m{n}.json"), ENVELOPE)
            a.result()
            b.result()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    shutil.rmtree(root)
    return count / elapsed


def make_ahead(root: Path, count: int) -> None:
    (root / "queued").mkdir(parents=True, exist_ok=True)
    for n in range(count):
        os.close(os.open(str(root / "queued" / f"m{n}.msg"), os.O_WRONLY | os.O_CREAT, 0o600))
    fsync_path(str(root / "queued"))
    os.sync()


def grouped(root: Path, commit: Callable[[Path, list[str]], None], clients: int,
            count: int) -> float:
    """Closed loop: C{clients} each wait for their message; a committer batches."""
    lock = threading.Condition()
    pending: list[tuple[str, threading.Event]] = []
    done = {"n": 0}
    numbers = iter(range(count))

    def client() -> None:
        for n in numbers:
            event = threading.Event()
            with lock:
                pending.append((f"m{n}", event))
                lock.notify()
            event.wait()

    def committer() -> None:
        while done["n"] < count:
            with lock:
                while not pending:
                    lock.wait(0.05)
                    if done["n"] >= count:
                        return
                batch, pending[:] = list(pending), []
            commit(root, [i for i, _ in batch])
            done["n"] += len(batch)
            for _, event in batch:
                event.set()

    for sub in ("tmp", "data", "queued"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    if commit is prepared:
        make_ahead(root, count)
    if commit is prepared_pairs:
        make_pairs(root, count)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    committing = threading.Thread(target=committer)
    start = time.perf_counter()
    committing.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    committing.join()
    elapsed = time.perf_counter() - start
    shutil.rmtree(root)
    return count / elapsed


def sink(root: Path, clients: int, count: int) -> float:
    """Each message appended to one file and fsynced, 10 threads (Twisted's pool)."""
    root.mkdir(parents=True, exist_ok=True)
    path = str(root / "mbox")
    numbers = iter(range(count))
    gate = threading.Semaphore(10)

    def client() -> None:
        for _ in numbers:
            with gate:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, PAYLOAD)
                    os.fsync(fd)
                finally:
                    os.close(fd)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    shutil.rmtree(root)
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="xrelay-rounds-", dir=args.dir))
    runs: dict[str, list[float]] = {"sink": [], "two_rounds": [], "one_round": [],
                                    "prepared_files": [], "prepared_pairs": [],
                                    "pairs_overlapped": []}
    try:
        for r in range(args.rounds):
            runs["sink"].append(round(sink(work / f"s{r}", args.concurrency, args.messages), 1))
            runs["two_rounds"].append(round(grouped(work / f"t{r}", two_rounds,
                                                    args.concurrency, args.messages), 1))
            runs["one_round"].append(round(grouped(work / f"o{r}", one_round,
                                                   args.concurrency, args.messages), 1))
            runs["prepared_files"].append(round(grouped(work / f"p{r}", prepared,
                                                        args.concurrency, args.messages), 1))
            runs["prepared_pairs"].append(round(grouped(work / f"q{r}", prepared_pairs,
                                                        args.concurrency, args.messages), 1))
            runs["pairs_overlapped"].append(round(overlapped_pairs(
                work / f"v{r}", args.concurrency, args.messages), 1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: sorted(v)[len(v) // 2] for k, v in runs.items()}
    print(json.dumps({"concurrency": args.concurrency, "messages": args.messages,
                      "runs": runs, "median": med,
                      "two_rounds_x_sink": round(med["two_rounds"] / med["sink"], 2),
                      "one_round_x_sink": round(med["one_round"] / med["sink"], 2),
                      "prepared_files_x_sink": round(med["prepared_files"] / med["sink"], 2),
                      "prepared_pairs_x_sink": round(med["prepared_pairs"] / med["sink"], 2),
                      "pairs_overlapped_x_sink": round(med["pairs_overlapped"] / med["sink"],
                                                       2),
                      "load_average": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
