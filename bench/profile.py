"""
Profile the relay (or the sandbox) under one load, with py-spy.

    .venv/bin/python bench/profile.py --concurrency 100 --messages 10 [--target sandbox]
        [--out bench/results/profile-relay.svg] [--format flamegraph|speedscope|raw]

Starts the sandbox and a relay exactly as C{bench/run.py} does, attaches
C{py-spy record} to the target process, runs the load generator, waits until the sandbox
mailbox holds every accepted message (so delivery is in the profile too), then stops
py-spy.  py-spy needs ptrace rights (root, or C{kernel.yama.ptrace_scope=0}).
The C{raw} format (collapsed stacks) is what C{bench/topstacks.py}-style greps read.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import Processes, free_port, mailbox_count, wait_for  # noqa: E402
from smtpload import run_load  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description="Profile xrelay under load with py-spy.")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--messages", type=int, default=10, help="per connection")
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument("--target", choices=("relay", "sandbox"), default="relay")
    parser.add_argument("--format", default="raw",
                        choices=("flamegraph", "speedscope", "raw"))
    parser.add_argument("--out", default=None)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    args = parser.parse_args()
    out = Path(args.out or HERE / "results" / f"profile-{args.target}.{ 'svg' if args.format == 'flamegraph' else 'txt'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="xrelay-profile-", dir="/var/tmp"))
    py_spy = os.path.join(os.path.dirname(sys.executable), "py-spy")

    from twisted.internet import defer, threads
    from twisted.internet.task import react

    async def go() -> None:
        processes = Processes(workdir)
        spy = None
        try:
            sandbox = await threads.deferToThread(processes.start_sandbox)
            port = free_port()
            relay = await threads.deferToThread(processes.start_relay, sandbox["account"],
                                                port, "relay")
            pid = relay.pid if args.target == "relay" else processes.children[0].pid
            spy = subprocess.Popen([py_spy, "record", "--pid", str(pid), "--rate",
                                    str(args.rate), "--format", args.format, "--output",
                                    str(out), "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # py-spy attaches
            start = time.perf_counter()
            run = await run_load("127.0.0.1", port, args.concurrency, args.messages,
                                 args.size)
            accepted = time.perf_counter() - start
            sandbox_dir = Path(sandbox["directory"])
            await threads.deferToThread(wait_for, lambda: mailbox_count(sandbox_dir)
                                        >= run.ok, 600, "delivery")
            delivered = time.perf_counter() - start
            print(f"accepted {run.ok} in {accepted:.2f}s ({run.rate:.0f}/s), all "
                  f"delivered after {delivered:.2f}s ({run.ok / delivered:.0f}/s); "
                  f"failed {run.failed} {run.errors}", flush=True)
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            processes.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"profile: {out}")

    react(lambda _r: defer.ensureDeferred(go()))


if __name__ == "__main__":
    main()
