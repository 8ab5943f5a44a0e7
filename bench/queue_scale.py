"""
How `xrelay queue list` and the daemon's start-up grow with the queue: N deferred
entries (each waiting an hour, so nothing is attempted while we measure), then

 - list: the installed `xrelay queue list` on the stopped daemon's spool (it takes the
   spool lock and reads every entry), wall time of the whole process;
 - list (daemon): the same command answered by the running daemon over its control
   socket;
 - start-up: `twistd -n xrelay` from exec until its SMTP listener accepts a connection.

    .venv/bin/python bench/queue_scale.py [--entries 5000 40000] [--dir /var/tmp]

Entries are written straight into the spool's layout (no fsync: this measures reading,
not writing).  Prints one JSON object per size; figures go in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
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


def timed_list(config: Path) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run([os.path.join(BIN, "xrelay"), "queue", "list", "--config",
                           str(config)], capture_output=True, check=True)
    elapsed = time.perf_counter() - start
    lines = done.stdout.decode().count("\n") - 1
    return elapsed, lines


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
        offline, listed = timed_list(config)
        assert listed == count, (listed, count)
        start = time.perf_counter()
        process = subprocess.Popen(
            [os.path.join(BIN, "twistd"), "-n", "--pidfile=",
             f"--logfile={work / 'twistd.log'}", "xrelay", "--config", str(config)],
            cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        try:
            wait_listening(port, process, 300)
            startup = time.perf_counter() - start
            online, listed = timed_list(config)
            assert listed == count, (listed, count)
        finally:
            process.terminate()
            process.wait(60)
        return {"entries": count, "queue_list_offline_s": round(offline, 2),
                "queue_list_daemon_s": round(online, 2),
                "startup_until_listening_s": round(startup, 2)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, nargs="+", default=[5000, 40000])
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    for count in args.entries:
        print(json.dumps(measure(count, Path(args.dir))), flush=True)


if __name__ == "__main__":
    main()
