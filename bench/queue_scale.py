"""
How `xrelay queue list` and the daemon's start-up grow with the queue: N deferred
entries (each waiting an hour, so nothing is attempted while we measure), then

 - list: the installed `xrelay queue list` on the stopped daemon's spool (it takes the
   spool lock and reads every entry), wall time and CPU time of the whole process;
 - list (daemon): the same command answered by the running daemon over its control
   socket;
 - start-up: `twistd -n xrelay` from exec until its SMTP listener accepts a connection
   (and the CPU time it used until then).

On a shared, loaded machine wall time mostly measures waiting for a core; the CPU
times are the comparable figures.

    .venv/bin/python bench/queue_scale.py [--entries 5000 40000] [--dir /var/tmp]
        [--rounds 2] [--baseline DIR]

With C{--baseline DIR} (an exported older tree, e.g. C{git archive 5db1b08 | tar -x -C
DIR}), each round measures that code too, alternating, so the ratio is fair on a noisy
machine.

Entries are written straight into the spool's layout (no fsync: this measures reading,
not writing).  Prints one JSON object per size; figures go in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fill(spool: Path, count: int) -> None:
    for sub in ("tmp", "data", "queued", "active", "deferred", "failed"):
        (spool / sub).mkdir(parents=True, exist_ok=True)
    message = b"Subject: scale\r\n\r\n" + b"x" * 1000 + b"\r\n"
    later = time.time() + 3600
    for i in range(count):
        entry_id = f"20260101T000000.{i % 1_000_000:06d}-1-{i // 1_000_000:06d}"
        (spool / "data" / f"{entry_id}.eml").write_bytes(message)
        record = {"id": entry_id, "sender": "scanner@example.com",
                  "recipients": ["a@example.org"], "size": len(message),
                  "account": "main", "received_at": time.time(), "attempts": 1,
                  "next_attempt": later, "last_attempt": time.time(),
                  "last_reply": {"code": 451, "text": "4.4.1 Connection refused"},
                  "original_recipients": ["a@example.org"], "failed_recipients": []}
        (spool / "deferred" / f"{entry_id}.json").write_text(json.dumps(record, indent=1))


def write_config(work: Path, port: int) -> Path:
    (work / "secret.txt").write_text("not-a-real-secret\n")
    os.chmod(work / "secret.txt", 0o600)
    path = work / "xrelay.toml"
    path.write_text(f"""
[server]
listen = ["tcp:{port}:interface=127.0.0.1"]
hostname = "relay.bench"
state_dir = "state"

[[accounts]]
name = "main"
provider = "microsoft"
user = "relay@example.com"
tenant = "example.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-000000000000"
client_secret_file = "secret.txt"
senders = ["*@example.com"]
authority = "https://127.0.0.1:9"
smtp_host = "127.0.0.1"
smtp_port = 9
""")
    return path


ENV: dict[str, str] = dict(os.environ)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_list(config: Path) -> tuple[float, float, int]:
    """Wall time and CPU time (user + system) of one `xrelay queue list`."""
    cpu = children_cpu()
    start = time.perf_counter()
    done = subprocess.run([os.path.join(BIN, "xrelay"), "queue", "list", "--config",
                           str(config)], capture_output=True, check=True, env=ENV)
    elapsed = time.perf_counter() - start
    lines = done.stdout.decode().count("\n") - 1
    return elapsed, children_cpu() - cpu, lines


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a running process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"twistd exited {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.01)
    raise SystemExit("the relay did not listen in time")


def measure(count: int, base: Path) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="xrelay-scale-", dir=base))
    try:
        port = free_port()
        config = write_config(work, port)
        fill(work / "state" / "spool", count)
        offline, offline_cpu, listed = timed_list(config)
        assert listed == count, (listed, count)
        start = time.perf_counter()
        process = subprocess.Popen(
            [os.path.join(BIN, "twistd"), "-n", "--pidfile=",
             f"--logfile={work / 'twistd.log'}", "xrelay", "--config", str(config)],
            cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env=ENV)
        try:
            wait_listening(port, process, 300)
            startup = time.perf_counter() - start
            startup_cpu = process_cpu(process.pid)
            online, online_cpu, listed = timed_list(config)
            assert listed == count, (listed, count)
            online_cpu += process_cpu(process.pid) - startup_cpu  # the daemon's share
        finally:
            process.terminate()
            process.wait(60)
        return {"entries": count, "queue_list_offline_s": round(offline, 2),
                "queue_list_offline_cpu_s": round(offline_cpu, 2),
                "queue_list_daemon_s": round(online, 2),
                "queue_list_daemon_cpu_s": round(online_cpu, 2),
                "startup_until_listening_s": round(startup, 2),
                "startup_cpu_s": round(startup_cpu, 2)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, nargs="+", default=[5000, 40000])
    parser.add_argument("--dir", default="/var/tmp")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--baseline", help="an exported older tree to compare with")
    args = parser.parse_args()
    os.chmod(args.dir, os.stat(args.dir).st_mode)  # it must exist
    for count in args.entries:
        for round in range(args.rounds):
            for code in ([args.baseline] if args.baseline else []) + [None]:
                ENV.clear()
                ENV.update(os.environ)
                if code:
                    ENV["PYTHONPATH"] = code
                result = measure(count, Path(args.dir))
                result["code"] = code or "this tree"
                result["round"] = round + 1
                result["load"] = round_load()
                print(json.dumps(result), flush=True)


def round_load() -> float:
    return round(os.getloadavg()[0], 1)


if __name__ == "__main__":
    main()
