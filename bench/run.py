"""
Run every xrelay benchmark on loopback and print the figures.

    .venv/bin/pip install '.[bench]' && .venv/bin/python bench/run.py [--quick]

Three processes: this one (the load generator, itself a Twisted program), the relay
(`twistd -n xrelay --config ...`, as a user runs it) and the sandbox upstream (with its
sending rate limit switched off).  Measured:

- the floor: this machine's raw fsync rate for 10 KB files (one writer, and 100
  concurrent writers, which is what group commit can at best exploit), the spool's own
  group-commit rate without SMTP, and a minimal loopback SMTP sink's acceptance rate
  with the same load generator;
- acceptance: messages per second answered with a durable 250, 10 KB messages, 1, 10
  and 100 concurrent connections, one and 100 messages per connection, with p50/p99
  latency from the end of DATA to the 250, and ratios to the floor;
- relay throughput: messages per second from client to sandbox mailbox, end to end,
  and the delivery path's pieces alone (the SMTP transport into the sandbox, the
  spool's state changes);
- size: 1 MB, 35 MB and 150 MB messages: time and the relay's peak memory growth;
- connections: 1,000 idle connections: memory per connection, from outside (the relay
  process's RSS) and inside (RSS after gc and tracemalloc in a fresh listener).

Every rate is measured C{--repeat} times (default 2): the best is reported, with the
spread, because other work on the machine (other test runs) makes single runs noisy;
the load average before and after is recorded.  The relay's state directory is under
C{--dir} (default /var/tmp: on many systems /tmp is a tmpfs, where fsync is free and
the figures would be meaningless).

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
        time.sleep(0.02)
    raise SystemExit(f"bench: timed out waiting for {what}")


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def helper(script: str, *args: str) -> dict[str, Any]:
    """Run another bench script (it needs its own reactor) and return its JSON line."""
    done = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_in_folder(measure: Any, args: Any, prefix: str) -> None:
    """
    Run C{measure(args, folder)} (a coroutine) under a reactor in a new folder under
    C{args.dir}, remove the folder, and print its figures as one JSON line: the
    harness of the memory benches.
    """
    from twisted.internet import defer
    from twisted.internet.task import react

    work = Path(tempfile.mkdtemp(prefix=prefix, dir=args.dir))
    out: dict[str, Any] = {}

    def go(reactor: Any) -> Any:
        return defer.ensureDeferred(measure(args, work)).addCallback(out.update)

    try:
        react(go)
    except SystemExit as e:
        if e.code:
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def best(runs: list[dict[str, Any]], key: str = "messages_per_second") -> dict[str, Any]:
    """The best run, with the spread of C{key} over all runs."""
    top = max(runs, key=lambda r: r[key])
    values = [r[key] for r in runs]
    return {**top, "runs": len(runs), "spread": [min(values), max(values)]}


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

    def start_sandbox(self, directory: Path | None = None) -> dict[str, Any]:
        """
        @param directory: where the sandbox keeps its mailbox (default: under the work
            dir); C{compare.py} puts it on a tmpfs, since it stands for a remote service
            whose storage is not the relay's disk.
        """
        info = self.workdir / "sandbox.json"
        child = subprocess.Popen(
            [sys.executable, str(HERE / "sandbox_server.py"),
             str(directory or self.workdir / "sandbox"), str(info)], stdout=subprocess.DEVNULL, stderr=open(self.workdir / "sandbox.log", "wb"))
        self.children.append(child)
        wait_for(info.exists, 60, "the sandbox")
        return json.loads(info.read_text())

    def start_relay(self, account: dict[str, Any], port: int, name: str,
                    pass_through_port: int | None = None,
                    log_pipe: bool = False, tree: str | None = None
                    ) -> subprocess.Popen[bytes]:
        """
        @param log_pipe: log to standard output, a pipe, as the systemd unit does
            (journald reads it), instead of C{--logfile} on the spool's disk, where
            each line's write can wait for the journal.
        @param tree: run the xrelay of this source tree (first on C{PYTHONPATH}), for
            a before/after comparison in one session; default: the installed one.
        """
        env = dict(os.environ, PYTHONPATH=tree) if tree else None
        state = self.workdir / f"state-{name}"
        account = dict(account, messages_per_minute=0, recipients_per_day=0,
                       max_connections=3)  # Exchange Online allows 3 per mailbox
        listen = f'"tcp:{port}:interface=127.0.0.1"'
        if pass_through_port is not None:
            listen += (f', {{ endpoint = "tcp:{pass_through_port}:interface=127.0.0.1", '
                       "pass_through = true }")
        lines = ["[server]", f"listen = [{listen}]",
                 'hostname = "bench.test"', f'state_dir = "{state}"',
                 "max_message_size = 200000000", "max_connections = 2000",
                 "max_connections_per_client = 2000", "", "[relay]",
                 'allow_networks = ["127.0.0.0/8"]', "", "[[accounts]]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in account.items()]
        config = self.workdir / f"{name}.toml"
        config.write_text("\n".join(lines) + "\n")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        log = self.workdir / (name + ".log")
        if log_pipe:
            reader = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=open(log, "wb"))
            self.children.append(reader)
            child = subprocess.Popen(
                [twistd, "-n", "--pidfile=", "xrelay", "--config", str(config)],
                cwd=self.workdir, stdout=reader.stdin, stderr=subprocess.STDOUT, env=env)
            assert reader.stdin is not None
            reader.stdin.close()  # the relay holds the pipe; cat ends when it does
        else:
            child = subprocess.Popen(
                [twistd, "-n", "--pidfile=", f"--logfile={log}",
                 "xrelay", "--config", str(config)], cwd=self.workdir,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
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
    """Messages in the sandbox mailbox folders (cheap: it is polled while we measure)."""
    total = 0
    try:
        folders = list(os.scandir(sandbox_dir / "mailbox"))
    except FileNotFoundError:
        return 0
    for folder in folders:
        if folder.is_dir():
            total += sum(1 for name in os.listdir(folder.path) if name.endswith(".eml"))
    return total


async def benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from twisted.internet import reactor
    from twisted.internet import threads

    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(),
                                           "load_average_before": load_average(),
                                           "state_dir": str(workdir)}}
    quick = args.quick
    repeat = max(1, args.repeat)
    per_connection_runs = [(1, 1), (10, 1), (100, 1), (1, 100), (10, 100), (100, 100)]
    if quick:
        per_connection_runs = [(1, 1), (10, 1), (10, 20), (100, 5)]

    results["floor_fsync"] = best([fsync_floor(workdir / "fsync") for _ in range(repeat)],
                                  "fsyncs_per_second")
    print("floor: fsync", results["floor_fsync"], flush=True)
    spool_runs = [helper("spool_commit.py", "--concurrency", "100", "--messages",
                         "500" if quick else "2000", "--dir", str(workdir))
                  for _ in range(repeat)]
    results["floor_concurrent_fsync"] = best(
        [r["floor_concurrent_fsync"] for r in spool_runs], "files_per_second")
    results["spool_group_commit"] = best([r["spool"] for r in spool_runs])
    print("floor: 100 concurrent fsync writers", results["floor_concurrent_fsync"],
          flush=True)
    print("spool alone, 100 in flight", results["spool_group_commit"], flush=True)

    # The sink floor, in this process: the load generator and the sink share a core,
    # which makes the floor conservative (the relay gets a process of its own).
    sink_port = free_port()
    listener = reactor.listenTCP(sink_port, SinkFactory(), interface="127.0.0.1")
    sink_runs = []
    for _ in range(repeat):
        run = await run_load("127.0.0.1", sink_port, 10, 100 if not quick else 20, 10240)
        sink_runs.append(run.summary())
    await listener.stopListening()
    results["floor_sink"] = best(sink_runs)
    sink_rate = results["floor_sink"]["messages_per_second"]
    print("floor: sink", results["floor_sink"], flush=True)

    processes = Processes(workdir)
    try:
        sandbox = await threads.deferToThread(processes.start_sandbox)
        port = free_port()
        relay = await threads.deferToThread(processes.start_relay, sandbox["account"],
                                            port, "relay")
        sandbox_dir = Path(sandbox["directory"])
        accepted = 0

        async def drained() -> None:
            # Each figure starts from an idle relay: no deliveries left from before.
            await threads.deferToThread(
                wait_for, lambda: mailbox_count(sandbox_dir) >= accepted, 900,
                "earlier messages to be delivered")

        acceptance = []
        for concurrency, per_connection in per_connection_runs:
            runs = []
            for _ in range(repeat):
                await drained()
                run = await run_load("127.0.0.1", port, concurrency, per_connection, 10240)
                accepted += run.ok
                runs.append(run.summary())
            row = {"concurrency": concurrency, "per_connection": per_connection,
                   **best(runs)}
            row["ratio_to_sink"] = round(row["messages_per_second"] / sink_rate, 3)
            row["ratio_to_fsync"] = round(
                row["messages_per_second"] / results["floor_fsync"]["fsyncs_per_second"], 3)
            row["ratio_to_concurrent_fsync"] = round(
                row["messages_per_second"]
                / results["floor_concurrent_fsync"]["files_per_second"], 3)
            acceptance.append(row)
            print("acceptance", row, flush=True)
        results["acceptance"] = acceptance

        # End to end: from an idle relay, time a batch from the first byte to the last
        # delivery into the sandbox mailbox.
        batch = (100, 10) if not quick else (20, 10)
        e2e_runs = []
        for _ in range(repeat):
            await drained()
            before = mailbox_count(sandbox_dir)
            start = time.perf_counter()
            run = await run_load("127.0.0.1", port, batch[0], batch[1], 10240)
            accepted += run.ok
            await threads.deferToThread(
                wait_for, lambda before=before, run=run:
                mailbox_count(sandbox_dir) >= before + run.ok, 900,
                "the batch to be delivered")
            elapsed = time.perf_counter() - start
            e2e_runs.append({"messages": run.ok, "failed": run.failed,
                             "connections": batch[0], "seconds": round(elapsed, 2),
                             "accepted_per_second": round(run.rate, 1),
                             "messages_per_second": round(run.ok / elapsed, 1)})
        results["relay_end_to_end"] = best(e2e_runs)
        print("end to end", results["relay_end_to_end"], flush=True)
        processes.stop(relay)
        results["delivery_path"] = best(
            [helper("delivery_path.py", "--messages", "300" if quick else "600",
                    "--dir", str(workdir)) for _ in range(repeat)],
            "transport_messages_per_second")
        print("delivery path alone", results["delivery_path"], flush=True)

        # Idle connections, from outside: a fresh relay, so that memory freed by earlier
        # runs is not reused and hidden; every connection has had its EHLO answered.
        port = free_port()
        relay = await threads.deferToThread(processes.start_relay, sandbox["account"],
                                            port, "idle")
        count = 1000 if not quick else 200
        base = rss_kib(relay.pid)
        idle = []
        for _ in range(count):
            idle.append(socket.create_connection(("127.0.0.1", port)))
        for s in idle:
            s.recv(512)  # the banner
            s.sendall(b"EHLO idle.example\r\n")
        for s in idle:
            data = b""
            while not data.endswith(b"250 HELP\r\n"):
                data += s.recv(4096)
        time.sleep(0.5)
        grown = rss_kib(relay.pid) - base
        for s in idle:
            s.close()
        processes.stop(relay)
        inside = helper("idle_connections.py", "--connections", str(count))
        results["idle_connections"] = {"connections": count,
                                       "relay_rss_growth_kib": grown,
                                       "kib_per_connection": round(grown / count, 2),
                                       "in_process": inside}
        print("idle connections", results["idle_connections"], flush=True)

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
    results["machine"]["load_average_after"] = load_average()
    return results


def table(results: dict[str, Any]) -> str:
    m = results["machine"]
    out = [f"{m['cpus']} CPUs, load average {m['load_average_before']} before, "
           f"{m.get('load_average_after')} after; best of {results['floor_sink']['runs']} "
           "runs, [spread]",
           f"fsync floor: {results['floor_fsync']['fsyncs_per_second']} /s one writer, "
           f"{results['floor_concurrent_fsync']['files_per_second']} /s 100 writers "
           f"{results['floor_concurrent_fsync']['spread']}",
           f"spool group commit alone (100 in flight): "
           f"{results['spool_group_commit']['messages_per_second']} msg/s "
           f"{results['spool_group_commit']['spread']}, "
           f"{results['spool_group_commit']['messages_per_batch']} per batch",
           f"sink floor: {results['floor_sink']['messages_per_second']} msg/s",
           "", "conc  per-conn   msg/s   p50 ms   p99 ms  x sink  x fsync  x fsync100  "
           "spread"]
    for row in results.get("acceptance", []):
        out.append(f"{row['concurrency']:4d}  {row['per_connection']:8d}  "
                   f"{row['messages_per_second']:6.1f}  {row['latency_p50_ms']:7.2f}  "
                   f"{row['latency_p99_ms']:7.2f}  {row['ratio_to_sink']:6.3f}  "
                   f"{row['ratio_to_fsync']:7.3f}  {row['ratio_to_concurrent_fsync']:9.3f}  "
                   f"{row['spread']}" + (f"  FAILED {row['messages_failed']}"
                                         if row["messages_failed"] else ""))
    if "relay_end_to_end" in results:
        e = results["relay_end_to_end"]
        out.append(f"\nend to end: {e['messages']} messages over {e['connections']} "
                   f"connections in {e['seconds']} s = {e['messages_per_second']} msg/s "
                   f"{e['spread']} (accepted at {e['accepted_per_second']} msg/s)")
    if "delivery_path" in results:
        d = results["delivery_path"]
        out.append(f"delivery path alone, {d['connections']} connections: transport "
                   f"{d['transport_messages_per_second']} msg/s {d['spread']}, spool "
                   f"queued->active->removed {d['spool_move_remove_per_second']} msg/s, "
                   f"engine draining a full spool {d.get('engine_messages_per_second')} "
                   "msg/s")
    if "idle_connections" in results:
        i = results["idle_connections"]
        inside = i["in_process"]
        out.append(f"idle connections: {i['connections']}: relay RSS "
                   f"{i['kib_per_connection']} KiB each; in a fresh listener "
                   f"{inside['rss_kib_per_connection']} KiB RSS, "
                   f"{inside['python_bytes_per_connection']} B of Python objects each")
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
    parser.add_argument("--repeat", type=int, default=2, help="runs per figure (best kept)")
    parser.add_argument("--dir", default="/var/tmp",
                        help="where the relay's state (spool) lives: a real disk, not tmpfs")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="xrelay-bench-", dir=args.dir))

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
