"""
`xrelay check-config` run as root reads the files again as the service user: a secret
only root can read is a mistake, not OK.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import bin_path

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder every user can enter (pytest's tmp_path is root's own, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="xrelay-serviceuser-", dir="/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path)


def write(folder: Path) -> Path:
    secret = folder / "secret.txt"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    config = folder / "xrelay.toml"
    config.write_text(
        '[server]\nhostname = "relay.test"\nstate_dir = "state"\n'
        '[[accounts]]\nname = "main"\nuser = "relay@example.com"\n'
        'tenant = "example.onmicrosoft.com"\nclient_id = "id"\n'
        'client_secret_file = "secret.txt"\n')
    config.chmod(0o644)
    return config


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([bin_path("xrelay"), "check-config", *args], cwd="/",
                          capture_output=True, text=True, timeout=120)


def test_a_secret_only_root_can_read_fails_for_the_service_user(folder: Path) -> None:
    config = write(folder)
    nobody = pwd.getpwnam("nobody")
    # As root alone it is fine: root reads everything.
    assert check("--as-user", "root", str(config)).returncode == 0
    result = check("--as-user", "nobody", str(config))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr == (
        f"xrelay: as user nobody: {config}: accounts.\"main\".client_secret_file: "
        f"{folder / 'secret.txt'} is not readable by this user; chmod/chown it so "
        "xrelay can read it\n")
    assert "s3cret" not in result.stdout + result.stderr
    # Readable through the group, as contrib/install.sh leaves /etc/xrelay: OK.
    os.chown(folder / "secret.txt", 0, nobody.pw_gid)
    (folder / "secret.txt").chmod(0o640)
    result = check("--as-user", "nobody", str(config))
    assert result.returncode == 0, result.stderr
    assert f"# {config}: readable by the service user nobody\n" in result.stdout


def test_a_state_folder_the_service_user_cannot_write(folder: Path) -> None:
    config = write(folder)
    os.chown(folder / "secret.txt", 0, grp.getgrnam("nogroup").gr_gid)
    (folder / "secret.txt").chmod(0o640)
    (folder / "state").mkdir(mode=0o700)
    result = check("--as-user", "nobody", str(config))
    assert result.returncode == 1
    assert (f"server.state_dir: {folder / 'state'} is not writable by this user; "
            f"chown -R nobody: {folder / 'state'}") in result.stderr


def test_an_unknown_user_is_named(folder: Path) -> None:
    result = check("--as-user", "no-such-user-here", str(write(folder)))
    assert result.returncode == 1
    assert "no user 'no-such-user-here' on this machine" in result.stderr
