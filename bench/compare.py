"""
xrelay side by side with the one-fsync-per-message floor, Postfix and
email-oauth2-proxy, in one session, on the same load, and the table of issue 19.

    sudo .venv/bin/python -u bench/compare.py [--rounds 3] [--dir /var/tmp]

What runs, each server a process of its own, the load generator in this one:

- durable acceptance: 20 connections x 50 messages of 10 KB (C{bench/smtpload.py},
  every reply checked), rounds alternating between the servers: the fsync sink of
  C{bench/sink.py} (append + fsync per message, the floor), Postfix (installed with
  apt-get and configured by this script: loopback only, a free port, its own queue
  under C{--dir}, delivery deferred so that it only accepts), and xrelay
  (C{twistd xrelay}, delivering to the sandbox at the same time, as it runs).
  Rates, ratios to the sink and to Postfix, CPU seconds of the server's processes per
  1,000 accepted messages.
- end to end: 300 messages over 10 connections into an idle xrelay whose upstream is
  the sandbox (its mailbox on a tmpfs: it stands for a remote service, whose storage
  is not this disk) behind C{bench/delayproxy.py} (5 ms and 20 ms each way), 3 upstream
  connections: messages per second from the first byte to the last message in the
  sandbox mailbox, and round trips per message counted by the proxy.  Postfix the
  same way into a plain sink behind the proxy (it cannot do XOAUTH2).
- printer-like sessions: 20 sessions one after another, one message each (connect,
  EHLO, [AUTH,] MAIL, RCPT, DATA, QUIT with smtplib), through the 20 ms upstream:
  xrelay's store-and-forward and pass-through listeners, and email-oauth2-proxy
  (C{pip install emailproxy} into a venv under C{--dir}, client credentials against
  the sandbox identity platform).  Median session time and server CPU per message.

Postfix and email-oauth2-proxy are skipped with a note when they cannot be set up (not
root, no package, no network).  Results: the table on standard output and
C{bench/results/compare.json}.  Nothing here asserts anything about time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import Processes, free_port, listening, load_average, mailbox_count, wait_for  # noqa: E402
from smtpload import make_message, run_load  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


# -- measuring processes ------------------------------------------------------------------

def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and its reaped children)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ppid = int(fields[1])
    ut, st, cut, cst = (int(x) for x in fields[11:15])
    return ppid, (ut + st + cut + cst) / TICKS


def tree_cpu(root: int) -> float:
    """CPU seconds of C{root} and every live descendant (dead ones are in cutime)."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            found = _stat(int(name))
            if found:
                table[int(name)] = found
    total, frontier = 0.0, {root}
    while frontier:
        total += sum(table[p][1] for p in frontier if p in table)
        frontier = {p for p, (ppid, _) in table.items() if ppid in frontier}
    return total


def child(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
                            env={**os.environ, **(env or {})})


def wait_info(path: Path, what: str) -> dict[str, Any]:
    wait_for(path.exists, 60, what)
    return json.loads(path.read_text())


def proxy_stats(info: dict[str, Any]) -> dict[str, int]:
    with socket.create_connection(("127.0.0.1", info["stats_port"]), timeout=10) as s:
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


SINK = """
import sys
sys.path.insert(0, {here!r})
from sink import SinkFactory
from twisted.internet import reactor
reactor.listenTCP({port}, SinkFactory({durable!r}), interface="127.0.0.1")
reactor.run()
"""


def start_sink(work: Path, port: int, durable: bool) -> subprocess.Popen[bytes]:
    path = str(work / f"sink-{port}.mbox") if durable else None
    p = child([sys.executable, "-c", SINK.format(here=str(HERE), port=port, durable=path)],
              work / f"sink-{port}.log")
    wait_for(lambda: listening(port), 30, "the sink")
    return p


def start_proxy(work: Path, target_port: int, delay_ms: float) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    info = work / f"proxy-{target_port}-{delay_ms}-{time.monotonic_ns()}.json"
    p = child([sys.executable, str(HERE / "delayproxy.py"), "--target-port", str(target_port),
               "--delay-ms", str(delay_ms), str(info)], work / f"proxy-{target_port}.log")
    return p, wait_info(info, "the delay proxy")


def stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# -- Postfix ------------------------------------------------------------------------------

MASTER_CF = """\
{port}      inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    """A loopback-only Postfix instance of its own (config, queue) under the work dir."""

    def __init__(self, work: Path, port: int) -> None:
        self.conf = work / "postfix-etc"
        self.queue = work / "postfix-spool"
        self.port = port

    @staticmethod
    def available() -> str | None:
        """None when Postfix can run here, else why not (after trying to install it)."""
        if os.geteuid() != 0:
            return "not root: Postfix needs root to run its own instance"
        if shutil.which("postfix") is None:
            preseed = "postfix postfix/main_mailer_type select No configuration\n"
            subprocess.run(["debconf-set-selections"], input=preseed.encode(), check=False)
            done = subprocess.run(["apt-get", "install", "-y", "-q", "postfix"],
                                  env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                                  capture_output=True, timeout=600)
            if done.returncode != 0 or shutil.which("postfix") is None:
                return "apt-get install postfix failed: " + done.stderr.decode()[-200:]
        return None

    def postfix(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["postfix", "-c", str(self.conf), *args], capture_output=True,
                              timeout=120)

    def configure(self, relayhost: str | None) -> None:
        self.conf.mkdir(parents=True, exist_ok=True)
        self.queue.mkdir(mode=0o755, exist_ok=True)
        data = Path(f"{self.queue}-data")
        data.mkdir(mode=0o700, exist_ok=True)
        shutil.chown(data, "postfix")
        defaults = "/etc/postfix"
        for name in ("postfix-files", "dynamicmaps.cf"):
            if os.path.exists(os.path.join(defaults, name)):
                shutil.copy(os.path.join(defaults, name), self.conf / name)
        lines = [
            "compatibility_level = 3.6", f"queue_directory = {self.queue}",
            f"data_directory = {self.queue}-data", "mail_owner = postfix",
            "setgid_group = postdrop", "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4", "myhostname = bench.test", "mydestination =",
            "mynetworks = 127.0.0.0/8", "smtpd_relay_restrictions = permit_mynetworks, reject",
            "alias_maps =", "alias_database =", "local_recipient_maps =", "biff = no",
            "smtputf8_enable = no", "message_size_limit = 200000000",
            "smtp_tls_security_level = none", "smtpd_tls_security_level = none",
            f"meta_directory = {self.conf}", "maillog_file = " + str(self.conf / "maillog"),
        ]
        if relayhost is None:
            # Acceptance only: queue durably, then defer without trying to deliver.
            lines += ["relayhost = [127.0.0.1]:9", "defer_transports = smtp, relay"]
        else:
            # Three connections, as xrelay's account has (Exchange Online's limit).
            lines += [f"relayhost = {relayhost}", "default_destination_concurrency_limit = 3",
                      "smtp_destination_concurrency_limit = 3"]
        (self.conf / "main.cf").write_text("\n".join(lines) + "\n")
        (self.conf / "master.cf").write_text(MASTER_CF.format(port=self.port))

    def start(self, relayhost: str | None) -> int:
        """Configure and start; the master's pid."""
        self.configure(relayhost)
        self.postfix("set-permissions")
        checked = self.postfix("check")
        # A fresh queue each time: what an earlier part left must not be delivered now.
        subprocess.run(["postsuper", "-c", str(self.conf), "-d", "ALL"], capture_output=True)
        started = self.postfix("start")
        if started.returncode != 0:
            raise RuntimeError("postfix start failed: " + (started.stderr + checked.stderr)
                               .decode()[-400:])
        wait_for(lambda: listening(self.port), 60, "Postfix")
        return int((self.queue / "pid" / "master.pid").read_text().split()[0])

    def queue_empty(self) -> bool:
        done = subprocess.run(["postqueue", "-c", str(self.conf), "-j"], capture_output=True)
        return done.returncode == 0 and not done.stdout.strip()

    def stop(self) -> None:
        self.postfix("stop")
        time.sleep(0.5)


# -- email-oauth2-proxy -------------------------------------------------------------------

def emailproxy_available(work: Path) -> tuple[str | None, str | None]:
    """The emailproxy executable in a bench venv (installed if need be), or why not."""
    venv = Path(os.environ.get("XRELAY_BENCH_VENV", "/var/tmp/xrelay-bench-venv"))
    exe = venv / "bin" / "emailproxy"
    if not exe.exists():
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True)
        pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "emailproxy"],
                             capture_output=True, timeout=600) if made.returncode == 0 else made
        if pip.returncode != 0 or not exe.exists():
            return None, "pip install emailproxy failed: " + pip.stderr.decode()[-200:]
    return str(exe), None


def start_emailproxy(exe: str, work: Path, port: int, upstream_port: int,
                     account: dict[str, Any], ca_file: str) -> subprocess.Popen[bytes]:
    with open(account["client_secret_file"]) as f:
        secret = f.read().strip()
    token_url = f"{account['authority']}/{account['tenant']}/oauth2/v2.0/token"
    config = work / "emailproxy.config"
    config.write_text("\n".join([
        f"[SMTP-{port}]", "server_address = localhost", f"server_port = {upstream_port}",
        "server_starttls = True", "local_address = 127.0.0.1", "",
        # No permission_url: with one the proxy falls back to interactive sign-in.
        f"[{account['user']}]",
        f"token_url = {token_url}", "oauth2_scope = https://outlook.office365.com/.default",
        "oauth2_flow = client_credentials", "redirect_uri = http://localhost",
        f"client_id = {account['client_id']}", f"client_secret = {secret}", ""]))
    p = child([exe, "--no-gui", "--config-file", str(config), "--cache-store",
               str(work / "emailproxy.cache"), "--log-file", str(work / "emailproxy.log")],
              work / "emailproxy.err", env={"SSL_CERT_FILE": ca_file})
    wait_for(lambda: listening(port), 60, "email-oauth2-proxy")
    return p


# -- loads --------------------------------------------------------------------------------

def printer_sessions(port: int, count: int, login: tuple[str, str] | None = None,
                     sender: str = "scanner@example.com") -> dict[str, Any]:
    """C{count} one-message sessions one after another; session times (ms)."""
    data = make_message(10240, 1)
    times, failed = [], []
    for _ in range(count):
        start = time.perf_counter()
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60,
                              local_hostname="printer.example") as client:
                client.ehlo("printer.example")
                if login:
                    client.login(*login)
                client.sendmail(sender, ["alice@example.net"], data)
        except (smtplib.SMTPException, OSError) as e:
            failed.append(str(e)[:120])
            continue
        times.append(time.perf_counter() - start)
    return {"sessions": count, "ok": len(times), "failed": failed[:3],
            "median_ms": round(statistics.median(times) * 1000, 1) if times else None}


async def accept(port: int, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    """One acceptance round against the server on C{port} (process tree C{pid})."""
    cpu = tree_cpu(pid)
    run = await run_load("127.0.0.1", port, args.connections, args.messages, 10240)
    used = tree_cpu(pid) - cpu
    summary = run.summary()
    summary["cpu_seconds_per_1000"] = round(used / max(run.ok, 1) * 1000, 2)
    return summary


async def lone_messages(port: int, pid: int, count: int) -> dict[str, Any]:
    """
    C{count} sessions one after another, one 10 KB message each (a printer): the
    median time from the final dot to the 250, and of the whole session.
    """
    cpu = tree_cpu(pid)
    dots, sessions = [], []
    for _ in range(count):
        start = time.perf_counter()
        run = await run_load("127.0.0.1", port, 1, 1, 10240)
        sessions.append(time.perf_counter() - start)
        if run.ok:
            dots.append(run.percentile(50))
    used = tree_cpu(pid) - cpu
    return {"dot_to_250_p50_ms": round(statistics.median(dots) * 1000, 2) if dots else None,
            "session_p50_ms": round(statistics.median(sessions) * 1000, 2),
            "cpu_ms_per_message": round(used / max(len(dots), 1) * 1000, 2)}


async def in_thread(f: Callable[..., Any], *a: Any) -> Any:
    from twisted.internet import threads

    return await threads.deferToThread(f, *a)


# -- the session ----------------------------------------------------------------------------

async def compare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(),
                                           "load_average_before": load_average()},
                               "notes": [], "load": f"{args.connections} connections x "
                               f"{args.messages} messages of 10 KB"}
    notes = results["notes"]
    children: list[subprocess.Popen[bytes]] = []
    processes = Processes(work)
    postfix: Postfix | None = None
    shm: Path | None = None
    try:
        why = await in_thread(Postfix.available)
        if why is None:
            postfix = Postfix(work, free_port())
            try:
                postfix_pid = await in_thread(postfix.start, None)
            except Exception as e:
                notes.append(f"Postfix skipped: {e}")
                postfix = None
        else:
            notes.append(f"Postfix skipped: {why}")

        sink_port = free_port()
        sink = await in_thread(start_sink, work, sink_port, True)
        children.append(sink)
        shm = Path(tempfile.mkdtemp(prefix="xrelay-compare-sandbox-", dir="/dev/shm")) \
            if os.path.isdir("/dev/shm") else None
        sandbox = await in_thread(processes.start_sandbox, shm)
        sandbox_dir = Path(sandbox["directory"])
        account = sandbox["account"]
        relay_port = free_port()
        # The relay as deployed: its upstream far away (the 20 ms proxy), delivering
        # while it accepts, logging to a pipe as under systemd.
        far, far_info = await in_thread(start_proxy, work, account["smtp_port"],
                                        max(args.delays))
        children.append(far)
        relay = await in_thread(lambda: processes.start_relay(
            dict(account, smtp_port=far_info["port"]), relay_port, "accept", log_pipe=True))
        servers = [("sink", sink_port, sink.pid)]
        if postfix is not None:
            servers.append(("postfix", postfix.port, postfix_pid))
        if args.baseline:
            # The code before, run from its own tree, side by side in the same rounds.
            before_port = free_port()
            before = await in_thread(lambda: processes.start_relay(
                dict(account, smtp_port=far_info["port"]), before_port, "before",
                log_pipe=True, tree=args.baseline))
            servers.append(("xrelay-before", before_port, before.pid))
        servers.append(("xrelay", relay_port, relay.pid))

        # Durable acceptance, rounds alternating between the servers; then single
        # messages (one connection, one message, one after another), the same way.
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in servers}
        single: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in servers}
        for _ in range(args.rounds):
            for name, port, pid in servers:
                rows[name].append(await accept(port, pid, args))
            print("acceptance round", {k: v[-1]["messages_per_second"] for k, v in rows.items()
                                       if v}, flush=True)
        for _ in range(args.rounds):
            for name, port, pid in servers:
                single[name].append(await lone_messages(port, pid, args.sessions))
            print("single-message round", {k: v[-1]["dot_to_250_p50_ms"]
                                           for k, v in single.items() if v}, flush=True)
        results["single"] = {name: {
            "dot_to_250_p50_ms": statistics.median(r["dot_to_250_p50_ms"] for r in runs),
            "session_p50_ms": statistics.median(r["session_p50_ms"] for r in runs),
            "runs_dot_to_250_p50_ms": [r["dot_to_250_p50_ms"] for r in runs],
            "cpu_ms_per_message": statistics.median(r["cpu_ms_per_message"] for r in runs)}
            for name, runs in single.items() if runs}
        results["per_round_ratios"] = {
            f"{a} / {b}": [round(x["messages_per_second"] / max(y["messages_per_second"],
                                                                 0.1), 2)
                           for x, y in zip(rows[a], rows[b], strict=True)]
            for a, b in (("xrelay", "postfix"), ("xrelay", "sink"), ("xrelay", "xrelay-before"),
                         ("xrelay-before", "postfix"), ("xrelay-before", "sink"))
            if rows.get(a) and rows.get(b)}
        acceptance = {}
        for name, runs in rows.items():
            if runs:
                rates = [r["messages_per_second"] for r in runs]
                acceptance[name] = {
                    "median_msg_per_s": statistics.median(rates), "runs": rates,
                    "cpu_seconds_per_1000": statistics.median(
                        r["cpu_seconds_per_1000"] for r in runs),
                    "p50_ms": statistics.median(r["latency_p50_ms"] for r in runs),
                    "failed": sum(r["messages_failed"] for r in runs)}
        results["acceptance"] = acceptance
        processes.stop(relay)  # what it has not delivered yet stays in its spool
        if args.baseline:
            processes.stop(before)
        stop(far)
        if postfix is not None:
            await in_thread(postfix.stop)
        results["machine"]["load_average_after_acceptance"] = load_average()
        if args.acceptance_only:
            return results

        # End to end and printer-like sessions through the delayed upstream.
        results["end_to_end"] = {}
        results["printer"] = {}
        for delay in args.delays:
            proxy, info = await in_thread(start_proxy, work, account["smtp_port"], delay)
            children.append(proxy)
            port, pass_port = free_port(), free_port()
            relay = await in_thread(
                lambda info=info, port=port, delay=delay, pass_port=pass_port:
                processes.start_relay(dict(account, smtp_port=info["port"]), port,
                                              f"e2e{delay:g}", pass_through_port=pass_port,
                                              log_pipe=True))
            before, stats = mailbox_count(sandbox_dir), proxy_stats(info)
            start = time.perf_counter()
            run = await run_load("127.0.0.1", port, 10, args.e2e_messages // 10, 10240)
            await in_thread(wait_for,
                            lambda before=before, run=run:
                            mailbox_count(sandbox_dir) >= before + run.ok, 900,
                            "the end-to-end messages")
            elapsed = time.perf_counter() - start
            after = proxy_stats(info)
            results["end_to_end"][f"xrelay {delay:g} ms"] = {
                "messages": run.ok, "failed": run.failed, "seconds": round(elapsed, 2),
                "msg_per_s": round(run.ok / elapsed, 1),
                "round_trips_per_message": round(
                    (after["round_trips"] - stats["round_trips"]) / max(run.ok, 1), 2),
                "upstream_connections": after["connections"] - stats["connections"]}
            print("end to end", delay, results["end_to_end"][f"xrelay {delay:g} ms"], flush=True)
            if delay == max(args.delays):
                for name, p in (("xrelay", port), ("xrelay pass-through", pass_port)):
                    done = mailbox_count(sandbox_dir)
                    await in_thread(printer_sessions, p, 1)  # warm: connections exist
                    await in_thread(wait_for, lambda done=done:
                                    mailbox_count(sandbox_dir) >= done + 1,
                                    60, "the warm-up message")
                    cpu = tree_cpu(relay.pid)
                    stats = proxy_stats(info)
                    done = mailbox_count(sandbox_dir)
                    session = await in_thread(printer_sessions, p, args.sessions)
                    # Store and forward: the round trips happen after the session.
                    await in_thread(wait_for, lambda done=done, session=session:
                                    mailbox_count(sandbox_dir) >= done + session["ok"],
                                    120, "the printer messages")
                    session["cpu_ms_per_message"] = round(
                        (tree_cpu(relay.pid) - cpu) / max(session["ok"], 1) * 1000, 1)
                    session["round_trips_per_message"] = round(
                        (proxy_stats(info)["round_trips"] - stats["round_trips"])
                        / max(session["ok"], 1), 2)
                    results["printer"][name] = session
                    print("printer", name, session, flush=True)
            processes.stop(relay)

            if postfix is not None:
                plain = free_port()
                sink_e2e = await in_thread(start_sink, work, plain, False)
                children.append(sink_e2e)
                pproxy, pinfo = await in_thread(start_proxy, work, plain, delay)
                children.append(pproxy)
                postfix_pid = await in_thread(postfix.start, f"[127.0.0.1]:{pinfo['port']}")
                stats = proxy_stats(pinfo)
                start = time.perf_counter()
                run = await run_load("127.0.0.1", postfix.port, 10, args.e2e_messages // 10,
                                     10240)
                await in_thread(wait_for, postfix.queue_empty, 900, "Postfix's queue")
                elapsed = time.perf_counter() - start
                after = proxy_stats(pinfo)
                results["end_to_end"][f"postfix {delay:g} ms"] = {
                    "messages": run.ok, "failed": run.failed, "seconds": round(elapsed, 2),
                    "msg_per_s": round(run.ok / elapsed, 1),
                    "round_trips_per_message": round(
                        (after["round_trips"] - stats["round_trips"]) / max(run.ok, 1), 2),
                    "upstream_connections": after["connections"] - stats["connections"],
                    "note": "into a plain sink (no TLS, no AUTH): Postfix cannot XOAUTH2"}
                print("end to end", results["end_to_end"][f"postfix {delay:g} ms"], flush=True)
                await in_thread(postfix.stop)
                stop(pproxy)
                stop(sink_e2e)

        # email-oauth2-proxy, printer-like, through the 20 ms upstream.
        exe, why = await in_thread(emailproxy_available, work)
        if exe is None:
            notes.append(f"email-oauth2-proxy skipped: {why}")
        else:
            proxy, info = await in_thread(start_proxy, work, account["smtp_port"],
                                          max(args.delays))
            children.append(proxy)
            port = free_port()
            try:
                ep = await in_thread(start_emailproxy, exe, work, port, info["port"],
                                     account, sandbox["ca_file"] if "ca_file" in sandbox
                                     else account["ca_file"])
            except SystemExit as e:
                notes.append(f"email-oauth2-proxy skipped: {e}")
            else:
                children.append(ep)
                cpu = tree_cpu(ep.pid)
                stats = proxy_stats(info)
                session = await in_thread(printer_sessions, port, args.sessions,
                                          (account["user"], "printer-password"))
                session["cpu_ms_per_message"] = round(
                    (tree_cpu(ep.pid) - cpu) / max(session["ok"], 1) * 1000, 1)
                session["round_trips_per_message"] = round(
                    (proxy_stats(info)["round_trips"] - stats["round_trips"])
                    / max(session["ok"], 1), 2)
                results["printer"]["email-oauth2-proxy"] = session
                print("printer email-oauth2-proxy", session, flush=True)
                if not session["ok"]:
                    notes.append("email-oauth2-proxy: no session succeeded; see "
                                 f"{work / 'emailproxy.log'}")
    finally:
        processes.stop_all()
        for p in reversed(children):
            stop(p)
        if postfix is not None:
            postfix.stop()
        if shm is not None:
            shutil.rmtree(shm, ignore_errors=True)
    results["machine"]["load_average_after"] = load_average()
    return results


def table(r: dict[str, Any]) -> str:
    m = r["machine"]
    acc = r["acceptance"]
    # --rounds 0: no acceptance rounds, only the end-to-end and printer runs.
    rounds = len(next(iter(acc.values()))["runs"]) if acc else 0
    out = [f"{m['cpus']} CPUs, load average {m['load_average_before']} before, "
           f"{m.get('load_average_after', m.get('load_average_after_acceptance'))} after; "
           f"acceptance: {r['load']}, medians of {rounds} alternating rounds", ""]
    sink = acc["sink"]["median_msg_per_s"] if acc else 0.0
    pf = acc.get("postfix", {}).get("median_msg_per_s")
    out.append("| durable acceptance | msg/s | x fsync sink | x Postfix | p50 ms | "
               "CPU s / 1,000 |")
    out.append("|---|---|---|---|---|---|")
    for name in ("sink", "postfix", "xrelay-before", "xrelay"):
        if name in acc:
            a = acc[name]
            out.append(f"| {name} | {a['median_msg_per_s']} {a['runs']} | "
                       f"{a['median_msg_per_s'] / sink:.2f} | "
                       f"{(a['median_msg_per_s'] / pf) if pf else float('nan'):.2f} | "
                       f"{a['p50_ms']} | {a['cpu_seconds_per_1000']} |")
    out += ["", "| per-round ratio | rounds |", "|---|---|"]
    out += [f"| {pair} | {ratios} |" for pair, ratios in r.get("per_round_ratios", {}).items()]
    out += ["", "| single messages (one per session) | dot to 250 p50 ms (rounds) | "
            "session p50 ms | CPU ms / msg |", "|---|---|---|---|"]
    for name, s in r.get("single", {}).items():
        out.append(f"| {name} | {s['dot_to_250_p50_ms']} {s['runs_dot_to_250_p50_ms']} | "
                   f"{s['session_p50_ms']} | {s['cpu_ms_per_message']} |")
    out += ["", "| end to end (300 msgs, 10 clients, 3 upstream connections) | msg/s | "
            "round trips / msg | upstream connections |", "|---|---|---|---|"]
    for name, e in r.get("end_to_end", {}).items():
        out.append(f"| {name} each way | {e['msg_per_s']} | {e['round_trips_per_message']} | "
                   f"{e['upstream_connections']} |")
    out += ["", "| printer-like, one message per session, 20 ms each way | median session ms |"
            " CPU ms / msg | upstream round trips / msg | ok |", "|---|---|---|---|---|"]
    for name, s in r.get("printer", {}).items():
        out.append(f"| {name} | {s['median_ms']} | {s['cpu_ms_per_message']} | "
                   f"{s['round_trips_per_message']} | {s['ok']}/{s['sessions']} |")
    out += [""] + [f"note: {n}" for n in r["notes"]]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description="xrelay against the floor, Postfix and "
                                     "email-oauth2-proxy, in one session.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--messages", type=int, default=50, help="per connection")
    parser.add_argument("--e2e-messages", type=int, default=300)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--delays", type=float, nargs="+", default=[5.0, 20.0],
                        help="one-way upstream delays (ms)")
    parser.add_argument("--dir", default="/var/tmp", help="a real disk, not tmpfs")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--baseline", default=None, metavar="TREE",
                        help="also run the xrelay of this source tree (the code before) in "
                        "the same acceptance rounds, e.g. /work/main")
    parser.add_argument("--acceptance-only", action="store_true",
                        help="stop after acceptance and single messages (no end to end, "
                        "no printer sessions)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="xrelay-compare-", dir=args.dir))
    os.chmod(work, 0o755)  # Postfix's daemons run as postfix and must reach their queue
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from twisted.internet import defer
    from twisted.internet.task import react

    def go(reactor: Any) -> Any:
        def report(results: dict[str, Any]) -> None:
            (out / "compare.json").write_text(json.dumps(results, indent=2))
            print()
            print(table(results))

        return defer.ensureDeferred(compare(args, work)).addCallback(report)

    try:
        react(go)
    except SystemExit as e:
        if e.code:
            print(f"compare: kept {work} for inspection")
            raise
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
