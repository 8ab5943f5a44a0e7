"""
`xrelay check-config` (and the daemon's start) find what would fail later: an unusable
or unsafe state folder, a key that does not belong to its certificate, an expired or
expiring certificate, secret files others can read, an open relay through a public
range, senders an earlier account shadows, users nobody routes, an admin page in clear.
Each refusal and warning is asserted as the exact line an operator sees.
"""

from __future__ import annotations

import datetime
import re
import io
import os
import pwd
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from twisted.python.filepath import FilePath

from tests.test_config import edit
from xrelay.sandbox.ca import CertificateAuthority


def check(path: Path | str) -> tuple[int, str, str]:
    from xrelay.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["check-config", str(path)])
    return code, out.getvalue(), err.getvalue()


def warnings_of(out: str) -> list[str]:
    return [line[len("# warning: "):] for line in out.splitlines()
            if line.startswith("# warning: ")]


@pytest.fixture
def good(folder: Path) -> Path:  # noqa: F811
    """The reference file, with its secrets private and its state folder made."""
    for name in ("secret.txt", "relay.key"):
        os.chmod(folder / name, 0o600)
    (folder / "state").mkdir(mode=0o700)
    os.chmod(folder / "state", 0o700)
    return folder / "xrelay.toml"


def test_the_reference_file_is_clean(good: Path) -> None:
    code, out, err = check(good)
    assert (code, err) == (0, "")
    assert warnings_of(out) == []


# -- state_dir: refused ------------------------------------------------------------


def test_state_dir_writable_by_others_is_refused(good: Path) -> None:
    state = good.parent / "state"
    os.chmod(state, 0o777)
    code, out, err = check(good)
    assert code == 1 and out == ""
    assert err == (f"xrelay: {good}: server.state_dir: {state} is writable by group or "
                   "others (mode 0777): another local user could move or plant spool "
                   f"files; chmod 700 {state}\n")


def test_state_dir_owned_by_another_user_is_refused(good: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a folder away needs root")
    state = good.parent / "state"
    os.chown(state, 65534, 65534)
    code, out, err = check(good)
    assert code == 1
    # The fix names the user, not a uid.
    assert err == (f"xrelay: {good}: server.state_dir: {state} is owned by nobody, "
                   "but xrelay runs as root: another user could move the spool; chown "
                   f"-R root {state} (run check-config as the relay's user, e.g. sudo -u "
                   "xrelay)\n")


def test_a_subfolder_owned_by_another_user_is_refused(good: Path) -> None:
    """A spool restored from a backup by another user: refused with the fix, not a
    PermissionError traceback when the daemon starts."""
    if os.geteuid() != 0:
        pytest.skip("giving a folder away needs root")
    state = good.parent / "state"
    (state / "spool" / "queued").mkdir(parents=True)
    os.chown(state / "spool", 65534, 65534)
    code, out, err = check(good)
    assert code == 1
    assert err == (f"xrelay: {good}: server.state_dir: {state}/spool is owned by nobody "
                   "or not writable, but xrelay runs as root: chown -R root "
                   f"{state}\n")


def test_state_dir_that_cannot_be_created_is_refused(good: Path) -> None:
    blocker = good.parent / "blocker"
    blocker.write_text("a file, not a folder\n")
    os.chmod(blocker, 0o600)
    path = edit(good.parent, 'state_dir = "state"', 'state_dir = "blocker/state"')
    code, out, err = check(path)
    assert code == 1
    assert err == (f"xrelay: {path}: server.state_dir: {blocker}/state does not exist and "
                   f"cannot be created ({blocker} is not writable by "
                   f"{pwd.getpwuid(os.geteuid()).pw_name}); "
                   "create it owned by the user xrelay runs as, mode 0700\n")


def test_state_dir_that_is_a_file_is_refused(good: Path) -> None:
    os.rmdir(good.parent / "state")
    (good.parent / "state").write_text("oops\n")
    code, out, err = check(good)
    assert code == 1
    assert err == (f"xrelay: {good}: server.state_dir: {good.parent / 'state'} is not a "
                   "folder; point state_dir at a folder\n")


def test_the_daemon_refuses_an_unsafe_state_dir_with_one_line(good: Path, run_relay
                                                              ) -> None:
    state = good.parent / "state"
    os.chmod(state, 0o775)
    relay = run_relay("--config", str(good), cwd=good.parent)
    code = relay.process.wait(timeout=60)
    stderr = [line for line in (good.parent / "stderr.txt").read_text().splitlines()
              if line.strip()]
    assert code == 1
    assert stderr == [f"xrelay: {good}: server.state_dir: {state} is writable by group or "
                      "others (mode 0775): another local user could move or plant spool "
                      f"files; chmod 700 {state}"]
    assert "Traceback" not in relay.log()


# -- the certificate: refused or warned ----------------------------------------------


def issue(folder: Path, name: str, **kw: object) -> tuple[Path, Path]:
    ca = CertificateAuthority.create(FilePath(str(folder / f"ca-{name}")))
    issued = ca.issue(["relay.example.com"], basename=name, **kw)
    os.chmod(issued.key_file, 0o600)
    return Path(issued.chain_file), Path(issued.key_file)


def test_a_key_that_does_not_belong_to_the_certificate_is_refused(good: Path) -> None:
    _, other_key = issue(good.parent, "other")
    path = edit(good.parent, 'tls_key = "relay.key"', f'tls_key = "{other_key}"')
    code, out, err = check(path)
    assert code == 1
    assert err == (f"xrelay: {path}: server.tls_key: {other_key} does not belong to the "
                   f"certificate in {good.parent / 'relay.pem'} (their public keys "
                   "differ); use the key the certificate was issued for (the first "
                   "certificate in tls_cert must be the server's own)\n")


def test_an_expired_certificate_is_refused(good: Path) -> None:
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=400)
    cert, key = issue(good.parent, "old", not_before=start, days=30)
    ends = start + datetime.timedelta(days=30)
    path = edit(good.parent, 'tls_cert = "relay.pem"\ntls_key = "relay.key"',
                f'tls_cert = "{cert}"\ntls_key = "{key}"')
    code, out, err = check(path)
    assert code == 1
    assert err == (f"xrelay: {path}: server.tls_cert: {cert} expired on "
                   f"{ends:%Y-%m-%d %H:%M} UTC; renew it (clients refuse an expired "
                   "certificate at STARTTLS)\n")


def test_an_expiring_certificate_is_a_warning(good: Path) -> None:
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    cert, key = issue(good.parent, "soon", not_before=start, days=10)
    ends = start + datetime.timedelta(days=10)
    path = edit(good.parent, 'tls_cert = "relay.pem"\ntls_key = "relay.key"',
                f'tls_cert = "{cert}"\ntls_key = "{key}"')
    code, out, err = check(path)
    assert code == 0, err
    [warning] = warnings_of(out)
    assert re.fullmatch(
        rf"listener tcp:2525:interface=127\.0\.0\.1: the TLS certificate "
        rf"{re.escape(str(cert))} expires on {ends:%Y-%m-%d} \(in (9|10) days\); renew it "
        r"and replace server\.tls_cert and server\.tls_key, then `xrelay reload`",
        warning), warning


# -- secrets readable by others: warned ------------------------------------------------


def test_secret_files_readable_by_others_are_warnings(good: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file to another group needs root")
    os.chmod(good.parent / "secret.txt", 0o644)
    os.chmod(good.parent / "relay.key", 0o640)
    os.chown(good.parent / "relay.key", 0, 65534)
    code, out, err = check(good)
    assert code == 0, err
    secret, key = good.parent / "secret.txt", good.parent / "relay.key"
    assert warnings_of(out) == [
        f"{good}: server.tls_key: {key} is readable by the group nogroup (mode 0640); "
        f"chown root:xrelay {key} && chmod 640 {key}",
        f'{good}: accounts."main".client_secret_file: {secret} is readable by others '
        f"(mode 0644); chown root:xrelay {secret} && chmod 640 {secret}"]


def test_recommended_root_group_0640_secrets_are_accepted(good: Path) -> None:
    """README and install.sh make secrets root:<the relay's group> 0640; following the
    old "chmod 600" advice broke the service, which then could not read them."""
    for name in ("secret.txt", "relay.key"):
        os.chmod(good.parent / name, 0o640)
        os.chown(good.parent / name, 0 if os.geteuid() == 0 else os.geteuid(),
                 os.getegid())
    code, out, err = check(good)
    assert code == 0, err
    assert warnings_of(out) == []


# -- an open relay: refused --------------------------------------------------------------


@pytest.mark.parametrize("network", ["0.0.0.0/0", "::/0", "8.8.8.0/24", "192.168.0.0/15"])
def test_public_allow_networks_are_refused(good: Path, network: str) -> None:
    path = edit(good.parent, '"192.168.10.0/24", ', f'"192.168.10.0/24", "{network}", ')
    code, out, err = check(path)
    assert code == 1
    assert err == (f'xrelay: {path}: relay.allow_networks[1]: "{network}" includes public '
                   "addresses: anyone there could relay through your account's identity "
                   "(an open relay); list your LAN's ranges (e.g. \"192.168.10.0/24\"), or "
                   "set relay.allow_public_networks = true if you really mean it\n")


def test_public_networks_when_asked_for(good: Path) -> None:
    path = edit(good.parent, '"192.168.10.0/24", ', '"0.0.0.0/0", ')
    edit(good.parent, "[relay]\n", "[relay]\nallow_public_networks = true\n")
    code, out, err = check(path)
    assert code == 0, err
    assert 'allow_networks = ["0.0.0.0/0", "2001:db8::/64"]' in out


# -- routing: warned ---------------------------------------------------------------------

SECOND = """
[[accounts]]
name = "scans"
provider = "microsoft"
user = "scans@example.com"
tenant = "example.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-000000000001"
client_secret_file = "secret.txt"
senders = ["scanner@example.com", "*@other.example"]
"""


def test_senders_shadowed_by_an_earlier_account_are_warnings(good: Path) -> None:
    path = edit(good.parent, "[delivery]", SECOND + "\n[delivery]")
    code, out, err = check(path)
    assert code == 0, err
    assert warnings_of(out) == [
        f'{path}: accounts."scans".senders: "scanner@example.com" is never used: account '
        '"main" comes first and takes it ("*@example.com"); put "scans" first or narrow '
        '"main"\'s senders']


def test_users_whose_senders_no_account_routes_are_warnings(good: Path) -> None:
    path = edit(good.parent, 'senders = ["scanner@example.com"]',
                'senders = ["scanner@example.com", "fax@branch.example.net"]')
    code, out, err = check(path)
    assert code == 0, err
    assert warnings_of(out) == [
        f'{path}: users."scanner".senders: no account routes "fax@branch.example.net": '
        "its mail would be refused at MAIL FROM; add it to an account's senders or set "
        "relay.default_account"]


# -- the admin page: warned ---------------------------------------------------------------


@pytest.mark.parametrize("listen, warned", [
    ("tcp:8025", True), ("tcp:8025:interface=0.0.0.0", True),
    ("tcp:8025:interface=192.168.10.5", True), ("tcp:8025:interface=127.0.0.1", False),
    ("tcp6:8025:interface=\\\\:\\\\:1", False), ("ssl:8443:privateKey=KEY:certKey=CERT", False)])
def test_an_admin_page_on_the_network_in_clear_is_a_warning(
        good: Path, password_hash: str, listen: str, warned: bool) -> None:  # noqa: F811
    listen = listen.replace("KEY", str(good.parent / "relay.key")).replace(
        "CERT", str(good.parent / "relay.pem"))
    path = edit(good.parent, "[delivery]", f'[admin]\nlisten = "{listen}"\n'
                f'password_hash = "{password_hash}"\n\n[delivery]')
    code, out, err = check(path)
    assert code == 0, err
    shown = listen.replace("\\\\", "\\")
    expected = [f'{path}: admin.listen: "{shown}" is reachable from the network without '
                "TLS: the admin password and session cookie would cross it in clear; "
                'listen on 127.0.0.1 (behind a TLS proxy) or use an "ssl:" endpoint']
    assert warnings_of(out) == (expected if warned else [])
