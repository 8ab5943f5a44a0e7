"""
Findings (low) about the files on the relay's host: C{xrelay make-cert --force} wrote and
chmodded through a planted symlink (root overwrote a file a local user pointed it at) and
wrote the new key before its chmod; the sandbox CA wrote keys the same way; the folders
above C{state_dir} were not checked (their owner could swap the whole state folder under
a running daemon); a crash could dump a process holding tokens and the cache key.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.python.filepath import FilePath

from tests.test_checks import check, good  # noqa: F401 (fixture)
from xrelay import keyfiles
from xrelay.cli import main
from xrelay.parents import parent_folder_problems
from xrelay.sandbox.ca import CertificateAuthority

ROOT = Path(__file__).resolve().parents[2]
VICTIM = b"root:x:0:0:the file a local user wants root to overwrite\n"


def planted(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A symlink at tmp_path/name pointing at a victim file."""
    victim = tmp_path / f"victim-{name}"
    victim.write_bytes(VICTIM)
    os.chmod(victim, 0o644)
    link = tmp_path / name
    link.symlink_to(victim)
    return link, victim


def test_make_cert_force_replaces_a_planted_symlink_and_never_follows_it(tmp_path, capsys):
    key, key_victim = planted(tmp_path, "xrelay.key")
    cert, cert_victim = planted(tmp_path, "xrelay.pem")
    assert main(["make-cert", "--name", "relay.lan", "--cert", str(cert), "--key", str(key),
                 "--force"]) == 0
    capsys.readouterr()
    assert key_victim.read_bytes() == cert_victim.read_bytes() == VICTIM
    assert stat.S_IMODE(key_victim.stat().st_mode) == 0o644  # no chmod through the link
    for path, mode in ((key, 0o600), (cert, 0o644)):
        st = os.lstat(path)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == mode
    assert b"PRIVATE KEY" in key.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["xrelay.key", "xrelay.pem", "victim-xrelay.key", "victim-xrelay.pem"])


def test_make_cert_without_force_refuses_even_a_dangling_symlink(tmp_path, capsys):
    key = tmp_path / "xrelay.key"
    target = tmp_path / "not-yet"
    key.symlink_to(target)
    assert main(["make-cert", "--name", "relay.lan", "--cert", str(tmp_path / "x.pem"),
                 "--key", str(key)]) == 1
    assert f"{key} exists; pass --force" in capsys.readouterr().err
    assert not target.exists() and key.is_symlink()


def test_the_key_is_created_with_its_final_mode_before_the_first_byte(tmp_path, monkeypatch):
    opened: list[tuple[str, int, int]] = []
    real_open = os.open

    def recording_open(path, flags, mode=0o777, **kwargs):  # type: ignore[no-untyped-def]
        opened.append((str(path), flags, mode))
        return real_open(path, flags, mode, **kwargs)

    monkeypatch.setattr(keyfiles.os, "open", recording_open)
    old_umask = os.umask(0)  # whatever the umask, the key is never wider than 0600
    try:
        assert main(["make-cert", "--name", "relay.lan", "--cert", str(tmp_path / "c.pem"),
                     "--key", str(tmp_path / "c.key")]) == 0
    finally:
        os.umask(old_umask)
    created = [(p, f, m) for p, f, m in opened if f & os.O_CREAT]
    assert created and all(f & os.O_EXCL and f & os.O_NOFOLLOW for _, f, _ in created)
    [(_, _, key_mode)] = [(p, f, m) for p, f, m in created if ".c.key." in p]
    assert key_mode == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "c.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "c.pem").st_mode) == 0o644


def test_the_sandbox_ca_writes_its_keys_with_the_same_writer(tmp_path):
    directory = tmp_path / "ca"
    directory.mkdir()
    link, victim = planted(directory, "ca.key")
    ca = CertificateAuthority.create(FilePath(str(directory)))
    issued = ca.issue(basename="server")
    assert victim.read_bytes() == VICTIM
    for path in (link, Path(issued.key_file)):
        st = os.lstat(path)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(issued.chain_file).st_mode) == 0o644


# -- the folders above state_dir -----------------------------------------------------


def test_a_parent_folder_writable_by_others_is_refused_with_the_fix(good):  # noqa: F811
    folder = good.parent
    os.chmod(folder, 0o777)
    try:
        code, out, err = check(good)
    finally:
        os.chmod(folder, 0o755)
    assert code == 1
    assert err == (f"xrelay: {good}: server.state_dir: {folder} (above state_dir) is "
                   "writable by others (mode 0777), who could swap the state folder under "
                   f"the running relay; chmod go-w {folder}\n")
    assert check(good)[0] == 0


def test_a_parent_folder_owned_by_another_user_is_refused(good):  # noqa: F811
    if os.geteuid() != 0:
        pytest.skip("giving a folder away needs root")
    folder = good.parent
    os.chown(folder, 65534, 65534)
    try:
        code, out, err = check(good)
    finally:
        os.chown(folder, 0, 0)
    assert code == 1
    assert err == (f"xrelay: {good}: server.state_dir: {folder} (above state_dir) is owned "
                   "by uid 65534, who could swap the state folder under the running relay; "
                   f"chown root {folder} (or move state_dir under a folder of root's or the "
                   "relay's user)\n")


def test_every_folder_up_to_the_root_is_checked_and_sticky_ones_pass(tmp_path):
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    os.chmod(tmp_path / "a", 0o775)  # group-writable, three levels up
    [line] = parent_folder_problems(str(deep / "state"))
    assert line.startswith(f"{tmp_path / 'a'} (above state_dir) is writable by its group")
    os.chmod(tmp_path / "a", 0o1777)  # sticky, like /tmp: only owners rename entries
    assert parent_folder_problems(str(deep / "state")) == []
    # A symlinked path is checked where it leads as well.
    open_folder = tmp_path / "open"
    open_folder.mkdir()
    os.chmod(open_folder, 0o777)
    (open_folder / "real").mkdir()
    (tmp_path / "link").symlink_to(open_folder / "real")
    assert any(line.startswith(f"{open_folder} (above state_dir) is writable by others")
               for line in parent_folder_problems(str(tmp_path / "link" / "state")))


# -- crash dumps --------------------------------------------------------------------


def test_the_daemon_process_is_made_non_dumpable():
    if not sys.platform.startswith("linux"):
        pytest.skip("prctl is Linux's")
    script = ("import ctypes\n"
              "from xrelay.startup import make_undumpable\n"
              "print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0), make_undumpable(),\n"
              "      ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split()
    assert out == ["1", "True", "0"]
    # twistd xrelay does it first thing.
    tap = (ROOT / "xrelay" / "tap.py").read_text()
    assert "make_undumpable()" in tap


def test_the_systemd_unit_allows_no_core_files():
    unit = (ROOT / "contrib" / "systemd" / "xrelay.service").read_text()
    assert "\nLimitCORE=0\n" in unit
