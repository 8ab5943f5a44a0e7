"""
Run every xrelay benchmark on loopback and print the figures.

    .venv/bin/pip install '.[bench]' && .venv/bin/python bench/run.py [--quick]

Three processes: this one (the load generator, itself a Twisted program), the relay
(`twistd -n xrelay --config ...`, as a user runs it) and the sandbox upstream (with its
sending rate limit switched off).  Measured:

- the floor: this machine's raw fsync rate for 10 KB files, and a minimal loopback SMTP
  sink's acceptance rate with the same load generator;
- acceptance: messages per second answered with a durable 250, 10 KB messages, 1, 10
  and 100 concurrent connections, one and 100 messages per connection, with p50/p99
  latency from the end of DATA to the 250, and ratios to the floor;
- relay throughput: messages per second from client to sandbox mailbox, end to end;
- size: 1 MB, 35 MB and 150 MB messages: time and the relay's peak memory growth;
- connections: 1,000 idle connections: memory per connection.

Results go to bench/results/results.json, a table on standard output, and (with
matplotlib installed) bench/results/latency.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from smtpload import run_load  # noqa: E402
from sink import SinkFactory  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise SystemExit(f"bench: timed out waiting for {what}")


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def fsync_floor(folder: Path, count: int = 300, size: int = 10240) -> dict[str, float]:
    """Raw rate of write + fsync(file) + rename + fsync(dir), one message at a time."""
    data = os.urandom(size)
    folder.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(folder, os.O_RDONLY)
    start = time.perf_counter()
    for i in range(count):
        tmp = folder / f"{i}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, folder / f"{i}.eml")
        os.fsync(dir_fd)
    elapsed = time.perf_counter() - start
    os.close(dir_fd)
    shutil.rmtree(folder)
    return {"fsyncs_per_second": round(count / elapsed, 1)}


class Processes:
    """The sandbox and relay child processes."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[subprocess.Popen[bytes]] = []

    def start_sandbox(self) -> dict[str, Any]:
        info = self.workdir / "sandbox.json"
        child = subprocess.Popen(
            [sys.executable, str(HERE / "sandbox_server.py"), str(self.workdir / "sandbox"),
             str(info)], stdout=subprocess.DEVNULL, stderr=open(self.workdir / "sandbox.log", "wb"))
        self.children.append(child)
        wait_for(info.exists, 60, "the sandbox")
        return json.loads(info.read_text())

    def start_relay(self, account: dict[str, Any], port: int, name: str) -> subprocess.Popen[bytes]:
        state = self.workdir / f"state-{name}"
        account = dict(account, messages_per_minute=0, recipients_per_day=0,
                       max_connections=3)  # Exchange Online allows 3 per mailbox
        lines = ["[server]", f'listen = ["tcp:{port}:interface=127.0.0.1"]',
                 'hostname = "bench.test"', f'state_dir = "{state}"',
                 "max_message_size = 200000000", "max_connections = 2000",
                 "max_connections_per_client = 2000", "", "[relay]",
                 'allow_networks = ["127.0.0.0/8"]', "", "[[accounts]]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in account.items()]
        config = self.workdir / f"{name}.toml"
        config.write_text("\n".join(lines) + "\n")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        child = subprocess.Popen(
            [twistd, "-n", "--pidfile=", f"--logfile={self.workdir / (name + '.log')}",
             "xrelay", "--config", str(config)], cwd=self.workdir,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.children.append(child)
        wait_for(lambda: listening(port), 60, "the relay")
        return child

    def stop(self, child: subprocess.Popen[bytes]) -> None:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def stop_all(self) -> None:
        for child in reversed(self.children):
            self.stop(child)


def mailbox_count(sandbox_dir: Path) -> int:
    return sum(1 for _ in (sandbox_dir / "mailbox").rglob("*.eml"))


async def benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from twisted.internet import reactor
    from twisted.internet import threads

    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}}
    quick = args.quick
    per_connection_runs = [(1, 1), (10, 1), (100, 1), (1, 100), (10, 100), (100, 100)]
    if quick:
        per_connection_runs = [(1, 1), (10, 1), (10, 20), (100, 5)]

    results["floor_fsync"] = fsync_floor(workdir / "fsync")
    print("floor: fsync", results["floor_fsync"], flush=True)

    # The sink floor, in this process: the load generator and the sink share a core,
    # which makes the floor conservative (the relay gets a process of its own).
    sink_port = free_port()
    listener = reactor.listenTCP(sink_port, SinkFactory(), interface="127.0.0.1")
    sink = await run_load("127.0.0.1", sink_port, 10, 100 if not quick else 20, 10240)
    await listener.stopListening()
    results["floor_sink"] = sink.summary()
    print("floor: sink", results["floor_sink"], flush=True)

    processes = Processes(workdir)
    try:
        sandbox = await threads.deferToThread(processes.start_sandbox)
        port = free_port()
        relay = await threads.deferToThread(processes.start_relay, sandbox["account"],
                                            port, "relay")
        acceptance = []
        for concurrency, per_connection in per_connection_runs:
            run = await run_load("127.0.0.1", port, concurrency, per_connection, 10240)
            row = {"concurrency": concurrency, "per_connection": per_connection,
                   **run.summary()}
            row["ratio_to_sink"] = round(run.rate / sink.rate, 3) if sink.rate else None
            row["ratio_to_fsync"] = round(
                run.rate / results["floor_fsync"]["fsyncs_per_second"], 3)
            acceptance.append(row)
            print("acceptance", row, flush=True)
        results["acceptance"] = acceptance

        # End to end: wait until the sandbox holds everything accepted so far, then
        # time a fresh batch from first byte to last delivery.
        sandbox_dir = Path(sandbox["directory"])
        accepted = sum(r["messages_ok"] for r in acceptance)
        await threads.deferToThread(
            wait_for, lambda: mailbox_count(sandbox_dir) >= accepted, 900,
            "earlier messages to be delivered")
        before = mailbox_count(sandbox_dir)
        batch = (10, 50) if not quick else (10, 10)
        start = time.perf_counter()
        run = await run_load("127.0.0.1", port, batch[0], batch[1], 10240)
        await threads.deferToThread(
            wait_for, lambda: mailbox_count(sandbox_dir) >= before + run.ok, 900,
            "the batch to be delivered")
        elapsed = time.perf_counter() - start
        results["relay_end_to_end"] = {"messages": run.ok, "seconds": round(elapsed, 2),
                                       "messages_per_second": round(run.ok / elapsed, 1)}
        print("end to end", results["relay_end_to_end"], flush=True)

        # Idle connections: memory per connection.
        base = rss_kib(relay.pid)
        idle = []
        count = 1000 if not quick else 200
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port))
            idle.append(s)
        for s in idle:
            s.recv(512)  # the banner: the server has set the connection up
        time.sleep(0.5)
        grown = rss_kib(relay.pid) - base
        for s in idle:
            s.close()
        results["idle_connections"] = {"connections": count,
                                       "rss_growth_kib": grown,
                                       "kib_per_connection": round(grown / count, 2)}
        print("idle connections", results["idle_connections"], flush=True)
        processes.stop(relay)

        # Size: a fresh relay per size, so each peak is its own.
        sizes = [1, 35, 150] if not quick else [1, 35]
        size_rows = []
        for megabytes in sizes:
            port = free_port()
            relay = await threads.deferToThread(processes.start_relay, sandbox["account"],
                                                port, f"size{megabytes}")
            base = rss_kib(relay.pid)
            start = time.perf_counter()
            run = await run_load("127.0.0.1", port, 1, 1, megabytes * 1024 * 1024)
            elapsed = time.perf_counter() - start
            peak = rss_kib(relay.pid, "VmHWM")
            size_rows.append({"megabytes": megabytes, "accepted": run.ok == 1,
                              "seconds_to_250": round(elapsed, 2),
                              "peak_growth_mib": round((peak - base) / 1024, 1)})
            print("size", size_rows[-1], flush=True)
            processes.stop(relay)
        results["size"] = size_rows
    finally:
        processes.stop_all()
    return results


def table(results: dict[str, Any]) -> str:
    out = [f"fsync floor: {results['floor_fsync']['fsyncs_per_second']} fsyncs/s; "
           f"sink floor: {results['floor_sink']['messages_per_second']} msg/s",
           "", "conc  per-conn   msg/s   p50 ms   p99 ms  x sink  x fsync  failed"]
    for row in results.get("acceptance", []):
        out.append(f"{row['concurrency']:4d}  {row['per_connection']:8d}  "
                   f"{row['messages_per_second']:6.1f}  {row['latency_p50_ms']:7.2f}  "
                   f"{row['latency_p99_ms']:7.2f}  {row['ratio_to_sink']:6.3f}  "
                   f"{row['ratio_to_fsync']:7.3f}  {row['messages_failed']:6d}")
    if "relay_end_to_end" in results:
        e = results["relay_end_to_end"]
        out.append(f"\nend to end: {e['messages']} messages in {e['seconds']} s = "
                   f"{e['messages_per_second']} msg/s")
    if "idle_connections" in results:
        i = results["idle_connections"]
        out.append(f"idle connections: {i['connections']}: {i['kib_per_connection']} KiB each")
    for row in results.get("size", []):
        out.append(f"size {row['megabytes']} MB: accepted={row['accepted']} in "
                   f"{row['seconds_to_250']} s, peak growth {row['peak_growth_mib']} MiB")
    return "\n".join(out)


def plot(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot; pip install '.[bench]')")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for per_connection in sorted({r["per_connection"] for r in results["acceptance"]}):
        rows = [r for r in results["acceptance"] if r["per_connection"] == per_connection]
        conc = [r["concurrency"] for r in rows]
        ax.plot(conc, [r["latency_p50_ms"] for r in rows], "o-",
                label=f"p50, {per_connection}/connection")
        ax.plot(conc, [r["latency_p99_ms"] for r in rows], "x--",
                label=f"p99, {per_connection}/connection")
    ax.set_xscale("log")
    ax.set_xlabel("concurrent connections")
    ax.set_ylabel("end of DATA → durable 250 (ms)")
    ax.set_title("xrelay acceptance latency, 10 KB messages")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Run xrelay's benchmarks.")
    parser.add_argument("--quick", action="store_true", help="smaller runs (a minute)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="xrelay-bench-"))

    from twisted.internet import defer
    from twisted.internet.task import react

    def go(reactor: Any) -> Any:
        d = defer.ensureDeferred(benchmark(args, workdir))

        def report(results: dict[str, Any]) -> None:
            (out / "results.json").write_text(json.dumps(results, indent=2))
            print()
            print(table(results))
            plot(results, out / "latency.png")

        return d.addCallback(report)

    try:
        react(go)
    except SystemExit as e:
        if e.code:
            print(f"bench: kept {workdir} for inspection")
            raise
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
