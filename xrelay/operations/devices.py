"""
C{xrelay devices [--json] [--failing]}: every device that talks to the relay, how, and
which of them fail, failing ones first.

With the daemon running, the command first asks it (over the control socket) to write
what it has gathered, so the answer includes the last second; then it reads
C{state_dir/devices.sqlite} read-only (and the message trace for the delivered and
bounced counts) itself.  With the daemon stopped it reads the same files, so it works
either way.  Exit status: 0 (also for an empty inventory), 1 the inventory cannot be
read, 2 a usage mistake.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from xrelay.subcommands import EXIT_OK, EXIT_PROBLEM, command, config_from
from xrelay.config import Config
from xrelay.devices import Device, InventoryMissing, devices_path, read_devices
from xrelay.devices.advice import fix_for, reason_for, summary_line
from xrelay.history.query import local_time

__all__ = ["device_json", "inventory", "devices_command", "table_lines"]


def inventory(config: Config) -> list[Device]:
    """
    The devices, failing first, with their delivered and bounced counts.

    @raise InventoryMissing: the inventory cannot be read.
    """
    from xrelay.history import history_path

    state_dir = config.server.state_dir
    return read_devices(devices_path(state_dir), history_path(state_dir))


def device_json(device: Device) -> dict[str, Any]:
    """One row of C{--json}: the stored facts, the counts, the state and the fix."""
    out = device.as_json()
    fix, actions = fix_for(device)
    out["reason"] = reason_for(device) if device.failing else None
    out["fix"] = fix or None
    out["actions"] = list(actions)
    return out


def _flush_daemon(state_dir: str) -> str | None:
    """Ask a running daemon to write what it gathered; a note when it could not."""
    from xrelay.operations.control import ControlClient, ControlRefusal, DaemonNotRunning

    try:
        ControlClient(state_dir, timeout=30).request("devices_flush")
    except DaemonNotRunning:
        return None  # stopped: the file is all there is
    except ControlRefusal as e:
        return f"the daemon did not write its last changes ({e}); showing the file"
    return None


def table_lines(devices: list[Device]) -> list[str]:
    """The table for a terminal: one tab-separated line per device."""
    lines = ["state\taddress\tuser\thelo\ttls\taccepted\tdelivered\tbounced\trefused\t"
             "auth failed\tlast seen\tlast refusal"]
    for d in devices:
        refusal = d.last_refusal
        lines.append("\t".join([
            d.state, d.address, d.user or "-", ",".join(d.helo_names) or "-",
            d.tls or "-", str(d.accepted), str(d.delivered), str(d.bounced),
            str(d.refused), str(d.auth_failures), local_time(d.last_seen),
            f"{local_time(refusal.at)} {refusal.stage}: {refusal.reply}" if refusal
            else "-"]))
        fix, _ = fix_for(d)
        if fix:
            lines.append(f"\tfix: {fix}")
    return lines


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--failing", action="store_true",
                        help="only the devices whose last attempt was refused")


@command("devices", "every device that talks to the relay (HELO, TLS, user, counts, last "
         "refusal), failing ones first; works with the daemon running or stopped",
         _arguments)
def devices_command(args: argparse.Namespace) -> int:
    config = config_from(args)
    if not config.relay.device_inventory:
        print("xrelay: the device inventory is off (relay.device_inventory = false)",
              file=sys.stderr)
        return EXIT_PROBLEM
    note = _flush_daemon(config.server.state_dir)
    if note:
        print(f"xrelay: {note}", file=sys.stderr)
    try:
        devices = inventory(config)
    except InventoryMissing as e:
        if not args.json:
            print(f"xrelay: {e}", file=sys.stderr)
        devices = []
        if "no device inventory" not in str(e):
            return EXIT_PROBLEM
    if args.failing:
        devices = [d for d in devices if d.failing]
    if args.json:
        print(json.dumps([device_json(d) for d in devices], indent=1))
        return EXIT_OK
    print("# " + summary_line(devices))
    for line in table_lines(devices):
        print(line)
    return EXIT_OK
