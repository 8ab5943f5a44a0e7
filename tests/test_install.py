"""
contrib/install.sh in a fresh Debian root, the way an administrator installs xrelay on
a host: the user, the venv, the folders and their modes, a unit that systemd-analyze
verifies clean, the relay started as the service user from the unit's own ExecStart,
a message delivered into the sandbox, a re-run that changes nothing, and an upgrade
that keeps the state.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import smtplib
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater

from tests.conftest import RelayProcess, free_port
from tests.debian_root import cached_base, copy_source, pip_settings, require_root_tools
from tests.test_end_to_end import sandbox  # noqa: F401 (fixture)

#: A host root: systemd for systemd-analyze, procps for the unit's /bin/kill.
HOST_PACKAGES = ("systemd", "procps")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INSTALLED = ("etc/passwd", "etc/group", "etc/shadow", "etc/xrelay", "var/lib/xrelay",
             "opt/xrelay", "usr/local/bin/xrelay", "etc/systemd/system")


def in_root(root: Path, *argv: str, env: dict[str, str] | None = None,
            **popen: Any) -> list[str]:
    """
    The command line that runs C{argv} chrooted in C{root}, with /proc mounted in a
    private mount namespace (gone when the command ends) and a clean environment.
    """
    environment = {"PATH": PATH, "LANG": "C.UTF-8", **(env or {})}
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"', str(root),
            "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in environment.items()), *argv]


def run_in_root(root: Path, *argv: str, env: dict[str, str] | None = None,
                timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(in_root(root, *argv, env=env), capture_output=True, text=True,
                          timeout=timeout)


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every installed path: type, mode, owner, size, modification time, content."""
    found: dict[str, tuple[Any, ...]] = {}

    def record(path: Path) -> None:
        info = path.lstat()
        content = (os.readlink(path) if stat.S_ISLNK(info.st_mode) else
                   hashlib.sha256(path.read_bytes()).hexdigest()
                   if stat.S_ISREG(info.st_mode) else None)
        found[str(path.relative_to(root))] = (info.st_mode, info.st_uid, info.st_gid,
                                              info.st_size, info.st_mtime_ns, content)

    for part in INSTALLED:
        top = root / part
        if not top.exists():
            continue
        record(top)
        if top.is_dir() and not top.is_symlink():
            for dirpath, dirnames, filenames in os.walk(top):
                for name in dirnames + filenames:
                    record(Path(dirpath) / name)
    return found


def ids(root: Path, name: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2]), int(fields[3])
    raise AssertionError(f"no user {name} in {root}/etc/passwd")


def unit_settings(unit: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.splitlines()
            if line.startswith(f"{key}=")]


@pytest.fixture
def fresh_root(tmp_path: Path) -> Path:
    require_root_tools("unshare", "chroot", "tar")
    tarball = cached_base("host", HOST_PACKAGES)
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "-xf", str(tarball)], check=True)
    # What a host has and a bare root lacks: name resolution (the sandbox is localhost).
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    shutil.copy("/etc/hosts", root / "etc/hosts")
    copy_source(root / "src", "contrib", "docs")
    return root


def pip_environment(root: Path) -> dict[str, str]:
    """pip inside the root reaches the index the way pip here does."""
    settings = pip_settings()
    if "PIP_CERT" in settings:
        shutil.copy(settings["PIP_CERT"], root / "etc/pip-ca.crt")
        settings["PIP_CERT"] = "/etc/pip-ca.crt"
    return settings


@pytest.mark.timeout(1200)
@pytest_twisted.inlineCallbacks
def test_install_sh_in_a_fresh_root(fresh_root: Path, sandbox) -> None:  # noqa: F811
    root = fresh_root
    env = pip_environment(root)

    def install() -> subprocess.CompletedProcess[str]:
        return run_in_root(root, "/bin/sh", "/src/contrib/install.sh", env=env)

    result = yield threads.deferToThread(install)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "xrelay install: created user xrelay" in result.stdout
    uid, gid = ids(root, "xrelay")
    etc, state = (root / "etc/xrelay").stat(), (root / "var/lib/xrelay").stat()
    assert (stat.S_IMODE(etc.st_mode), etc.st_uid, etc.st_gid) == (0o750, 0, gid)
    assert (stat.S_IMODE(state.st_mode), state.st_uid, state.st_gid) == (0o700, uid, gid)
    assert os.access(root / "opt/xrelay/bin/twistd", os.X_OK)

    # The unit as installed: systemd's own verifier finds nothing, its documentation
    # exists, and ExecStart names the venv's twistd.
    unit = (root / "etc/systemd/system/xrelay.service").read_text()
    verify = yield threads.deferToThread(
        run_in_root, root, "systemd-analyze", "verify", "/etc/systemd/system/xrelay.service")
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
    for documentation in unit_settings(unit, "Documentation"):
        assert documentation.startswith("file://")
        assert (root / documentation[len("file:///"):]).is_file(), documentation
    (exec_start,) = unit_settings(unit, "ExecStart")
    argv = shlex.split(exec_start)
    assert argv[0] == "/opt/xrelay/bin/twistd"
    assert unit_settings(unit, "User") == ["xrelay"]

    # A configuration for the sandbox, its secret left root-only by mistake.
    port = free_port()
    account = dict(sandbox.default_account())
    shutil.copy(account["client_secret_file"], root / "etc/xrelay/secret.txt")
    shutil.copy(account["ca_file"], root / "etc/xrelay/sandbox-ca.pem")
    account.update(client_secret_file="secret.txt", ca_file="sandbox-ca.pem")
    lines = ["[server]", f'listen = ["tcp:{port}:interface=127.0.0.1"]',
             'hostname = "relay.test"', "[relay]", 'allow_networks = ["127.0.0.0/8"]',
             "[[accounts]]", *(f"{k} = {json.dumps(v)}" for k, v in account.items())]
    (root / "etc/xrelay/xrelay.toml").write_text("\n".join(lines) + "\n")
    for name in ("xrelay.toml", "secret.txt", "sandbox-ca.pem"):
        (root / "etc/xrelay" / name).chmod(0o600)

    # check-config run as root reads it as the service user, and says what is wrong.
    check = yield threads.deferToThread(
        run_in_root, root, "/opt/xrelay/bin/xrelay", "check-config")
    assert check.returncode == 1, check.stdout + check.stderr
    assert check.stderr.startswith("xrelay: as user xrelay: /etc/xrelay/xrelay.toml: "
                                   "cannot read the file (permission denied)"), check.stderr
    # install.sh puts the files right (root:xrelay 0640); then check-config is OK.
    result = yield threads.deferToThread(install)
    assert result.returncode == 0, result.stderr
    assert "made /etc/xrelay/secret.txt root:xrelay 0640" in result.stdout
    check = yield threads.deferToThread(
        run_in_root, root, "/usr/local/bin/xrelay", "check-config")
    assert check.returncode == 0, check.stdout + check.stderr
    # The recommended root:xrelay 0640 draws no warning (its "chmod 600" advice, once
    # followed, left the service unable to read its secret).
    assert "# warning:" not in check.stdout, check.stdout
    check = yield threads.deferToThread(
        run_in_root, root, "/opt/xrelay/bin/xrelay", "check-config")
    assert "# /etc/xrelay/xrelay.toml: readable by the service user xrelay" in check.stdout

    # Re-running the script changes nothing at all.
    before = snapshot(root)
    result = yield threads.deferToThread(install)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "xrelay install: nothing to change; xrelay is installed\n"
    assert snapshot(root) == before

    # The relay as systemd would start it: the unit's user, environment and ExecStart.
    environment = dict(e.split("=", 1) for e in unit_settings(unit, "Environment"))
    environment["STATE_DIRECTORY"] = "/var/lib/xrelay"
    log = root.parent / "relay.log"
    process = subprocess.Popen(
        in_root(root, "runuser", "-u", "xrelay", "--", *argv, env=environment),
        stdin=subprocess.DEVNULL, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    relay = RelayProcess(process, log)
    try:
        yield threads.deferToThread(relay.wait_for_port, port, timeout=120)

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
                client.sendmail("printer@example.com", ["client@example.net"],
                                b"Subject: installed\r\n\r\nfrom /opt/xrelay\r\n")

        yield threads.deferToThread(send)
        for _ in range(600):
            if sandbox.mailbox.messages:
                break
            yield deferLater(reactor, 0.1, lambda: None)
        (delivered,) = sandbox.mailbox.messages
        assert b"Subject: installed" in delivered.data
        # The admin command on the PATH runs as the service user and reaches the daemon.
        queue = yield threads.deferToThread(
            run_in_root, root, "xrelay", "queue", "list")
        assert queue.returncode == 0, queue.stdout + queue.stderr
    finally:
        status = yield threads.deferToThread(relay.stop, 60)
    assert status in (0, -signal.SIGTERM, 128 + signal.SIGTERM), relay.log()
    assert "Server Shut Down." in relay.log()
    # Everything the daemon wrote is the service user's: it ran as xrelay.
    written = [p for p in (root / "var/lib/xrelay").rglob("*")]
    assert root / "var/lib/xrelay/keys/cache.key" in written
    assert {(p.stat().st_uid, p.stat().st_gid) for p in written} == {(uid, gid)}

    # An upgrade (a new version of the source) replaces the package, keeps the state.
    state_before = {k: v for k, v in snapshot(root).items() if k.startswith("var/lib")}
    init = root / "src/xrelay/__init__.py"
    old_version = re.search(r'__version__ = "([^"]+)"', init.read_text()).group(1)
    new_version = f"{old_version}.post9"
    init.write_text(init.read_text().replace(f'"{old_version}"', f'"{new_version}"'))
    result = yield threads.deferToThread(install)
    assert result.returncode == 0, result.stderr
    assert f"installed xrelay-{new_version}-py3-none-any.whl" in result.stdout
    version = yield threads.deferToThread(
        run_in_root, root, "/opt/xrelay/bin/xrelay", "--version")
    assert version.stdout == f"xrelay {new_version}\n", version.stdout + version.stderr
    assert {k: v for k, v in snapshot(root).items() if k.startswith("var/lib")} == \
        state_before


@pytest.mark.timeout(600)
def test_install_sh_refuses_a_python_the_service_user_cannot_run(fresh_root: Path
                                                                 ) -> None:
    """A Python that root can run but the service user cannot (built under /root, as
    pyenv does): refused before anything is built, with the reason and the fix."""
    root = fresh_root
    private = root / "root/pyenv/bin"
    private.mkdir(parents=True)
    (private / "python3").symlink_to("/usr/bin/python3")
    (root / "root").chmod(0o700)
    result = run_in_root(root, "/bin/sh", "/src/contrib/install.sh",
                         env={"PYTHON": "/root/pyenv/bin/python3"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith(
        "xrelay install: refused: the service user xrelay cannot run "
        "/root/pyenv/bin/python3 ("), result.stderr
    assert "Permission denied" in result.stderr
    assert "Use the system Python (unset PYTHON" in result.stderr
    assert not (root / "opt/xrelay").exists()  # nothing built on it
