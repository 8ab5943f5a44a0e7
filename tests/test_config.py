"""
The configuration contract: a good file becomes attrs objects with paths resolved
against its folder, and each kind of mistake becomes one line naming file and key,
both from the reader and from `twistd -n xrelay --config FILE` (exit status 1, no
traceback, before anything listens).
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from xrelay.config import ConfigError
from xrelay.configfile import find_config_path, load_config, read_config
from xrelay.passwords import hash_password

GOOD = """
[server]
listen = ["tcp:2525:interface=127.0.0.1", {{ endpoint = "tcp:2465:interface=127.0.0.1", implicit_tls = true }}]
hostname = "relay.example.com"
tls_cert = "relay.pem"
tls_key = "relay.key"
state_dir = "state"

[relay]
allow_networks = ["192.168.10.0/24", "2001:db8::/64"]

[[users]]
name = "scanner"
password_hash = "{hash}"
senders = ["scanner@example.com"]

[[accounts]]
name = "main"
provider = "microsoft"
user = "relay@example.com"
flow = "client_credentials"
tenant = "example.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-000000000000"
client_secret_file = "secret.txt"
senders = ["*@example.com"]

[delivery]
first_retry = 30
"""


@pytest.fixture(scope="module")
def password_hash() -> str:
    return hash_password("correct horse", log2_n=10)


@pytest.fixture
def folder(tmp_path: Path, password_hash: str) -> Path:
    from twisted.python.filepath import FilePath

    from xrelay.sandbox.ca import CertificateAuthority

    ca = CertificateAuthority.create(FilePath(str(tmp_path / "ca")))
    issued = ca.issue(["relay.example.com"])
    os.rename(issued.chain_file, tmp_path / "relay.pem")
    os.rename(issued.key_file, tmp_path / "relay.key")
    (tmp_path / "secret.txt").write_text("s3cret-value\n")
    (tmp_path / "xrelay.toml").write_text(GOOD.format(hash=password_hash))
    return tmp_path


def test_good_file(folder: Path) -> None:
    config = read_config(str(folder / "xrelay.toml"))
    assert config.path == str(folder / "xrelay.toml")
    assert config.server.state_dir == str(folder / "state")
    assert config.server.tls_cert == str(folder / "relay.pem")
    assert [listener.implicit_tls for listener in config.server.listen] == [False, True]
    assert config.relay.allow_networks == (
        ipaddress.ip_network("192.168.10.0/24"), ipaddress.ip_network("2001:db8::/64"))
    (account,) = config.accounts
    assert account.client_secret_file == str(folder / "secret.txt")
    assert account.smtp_host == "smtp.office365.com" and account.smtp_port == 587
    assert account.messages_per_minute == 30
    assert config.delivery.first_retry == 30 and config.delivery.max_age == 432000
    assert config.users[0].senders[0].matches("Scanner@Example.com")
    # Secrets stay on disk: neither the hash nor the secret is in the repr.
    assert "s3cret" not in repr(config) and "$scrypt$" not in repr(config)


def edit(folder: Path, old: str, new: str) -> str:
    path = folder / "xrelay.toml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))
    return str(path)


# (what to replace, with what, the key the message must name, words it must contain)
MISTAKES = {
    "unknown key": ('hostname = "relay', 'hostnme = "relay', "server.hostnme",
                    'did you mean "hostname"'),
    "wrong type": ("first_retry = 30", 'first_retry = "30"', "delivery.first_retry",
                   "must be a whole number"),
    "bad CIDR": ('"192.168.10.0/24"', '"192.168.10.300/24"', "relay.allow_networks[0]",
                 "CIDR"),
    "bad endpoint": ('"tcp:2525:interface=127.0.0.1"', '"tcpx:2525"', "server.listen[0]",
                     "not a valid endpoint description"),
    "missing secret file": ('"secret.txt"', '"nope.txt"',
                            'accounts."main".client_secret_file', "does not exist"),
    "plaintext password": ('password_hash = "', 'password = "', 'users[0].password',
                           "xrelay hash-password"),
    "password pasted as hash": ("password_hash = \"$scrypt$", 'password_hash = "hunter2"#',
                                'users."scanner".password_hash', "xrelay hash-password"),
    "secret inline": ('client_secret_file = "secret.txt"', 'client_secret = "abc"',
                      'accounts."main".client_secret', "client_secret_file"),
    "bad provider": ('provider = "microsoft"', 'provider = "yahoo"',
                     'accounts."main".provider', "microsoft, google"),
    "plain http authority": ('flow = "client_credentials"',
                             'flow = "client_credentials"\nauthority = "http://x"',
                             'accounts."main".authority', "https://"),
    "not TOML": ("[delivery]", "[delivery", "xrelay.toml", "not valid TOML"),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_mistake_named(folder: Path, mistake: str) -> None:
    old, new, key, words = MISTAKES[mistake]
    path = edit(folder, old, new)
    with pytest.raises(ConfigError) as caught:
        read_config(path)
    line = str(caught.value)
    assert line.startswith(path)
    assert key in line and words in line
    assert "\n" not in line
    assert "hunter2" not in line and "abc" not in line


def test_unreadable_secret_file(folder: Path) -> None:
    if os.geteuid() == 0:
        # root reads everything; an unreadable file is a folder then.
        os.remove(folder / "secret.txt")
        os.mkdir(folder / "secret.txt")
        expected = "is a folder"
    else:  # pragma: no cover - CI runs as root
        os.chmod(folder / "secret.txt", 0)
        expected = "not readable"
    with pytest.raises(ConfigError, match=expected):
        read_config(str(folder / "xrelay.toml"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        read_config(str(tmp_path / "absent.toml"))


def test_search_order(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    monkeypatch.setenv("XRELAY_CONFIG", str(folder / "xrelay.toml"))
    assert find_config_path("explicit.toml") == ("explicit.toml", True)
    assert find_config_path(None) == (str(folder / "xrelay.toml"), True)
    assert load_config(None).path == str(folder / "xrelay.toml")
    monkeypatch.delenv("XRELAY_CONFIG")
    if not os.path.exists("/etc/xrelay/xrelay.toml"):
        assert find_config_path(None) == (None, False)
        assert load_config(None).sandbox_dir is not None


def twistd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("XRELAY_CONFIG", None)
    return subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "twistd"), *args],
        cwd=cwd, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("mistake", ["unknown key", "bad CIDR", "bad endpoint",
                                     "missing secret file", "plaintext password",
                                     "wrong type"])
def test_twistd_refuses_bad_file(folder: Path, mistake: str) -> None:
    old, new, key, words = MISTAKES[mistake]
    path = edit(folder, old, new)
    result = twistd("-n", "--pidfile=", "xrelay", "--config", path, cwd=folder)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"xrelay: {path}: ") and key in lines[0]
    assert words in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_twistd_missing_config(tmp_path: Path) -> None:
    result = twistd("-n", "--pidfile=", "xrelay", "--config", "absent.toml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "xrelay: absent.toml: no such file; pass --config FILE or set XRELAY_CONFIG")


def test_plugin_is_lazy() -> None:
    """Importing the plugin must not import twisted.mail (which installs a reactor)."""
    code = textwrap.dedent("""
        import sys
        from twisted.plugin import getPlugins
        from twisted.application.service import IServiceMaker
        names = [p.tapname for p in getPlugins(IServiceMaker)]
        assert "xrelay" in names, names
        import twisted.plugins.xrelay_plugin
        bad = [m for m in ("twisted.mail", "twisted.mail.smtp", "twisted.internet.reactor")
               if m in sys.modules]
        print(",".join(bad) or "clean")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.strip() == "clean", result.stderr


def test_users_without_tls_is_a_warning(folder: Path) -> None:
    edit(folder, ', { endpoint = "tcp:2465:interface=127.0.0.1", implicit_tls = true }', "")
    path = edit(folder, 'tls_cert = "relay.pem"\ntls_key = "relay.key"\n', "")
    config = read_config(path)
    (warning,) = config.warnings()
    assert warning.startswith(f"{path}: server.tls_cert: [[users]] can never log in")
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "xrelay"),
                             "check-config", path], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    assert f"# warning: {warning}" in result.stdout
    assert "$scrypt$" not in result.stdout and "s3cret" not in result.stdout


# -- Google accounts: refresh token file or browser sign-in -----------------------------

GOOGLE = """
[[accounts]]
name = "gmail"
provider = "google"
user = "scanner@example.org"
client_id = "123-abc.apps.googleusercontent.com"
{extra}
"""


def google_config(folder: Path, extra: str) -> str:
    path = folder / "xrelay.toml"
    path.write_text(path.read_text() + GOOGLE.format(extra=textwrap.dedent(extra)))
    return str(path)


def test_google_auth_code_without_refresh_token_file(folder: Path) -> None:
    path = google_config(folder, 'flow = "auth_code"\nclient_secret_file = "secret.txt"')
    account = read_config(path).account("gmail")
    assert account.flow == "auth_code" and account.refresh_token_file is None
    assert account.authorization_url == "https://accounts.google.com/o/oauth2/v2/auth"
    assert account.authority == "https://oauth2.googleapis.com"
    assert account.smtp_host == "smtp.gmail.com"


def test_google_defaults_to_refresh_token_and_takes_an_authorization_url(folder: Path) -> None:
    (folder / "rt.txt").write_text("1//0abc\n")
    path = google_config(folder, '''\
        client_secret_file = "secret.txt"
        refresh_token_file = "rt.txt"
        authorization_url = "https://accounts.example.test/o/oauth2/v2/auth/"
        ''')
    account = read_config(path).account("gmail")
    assert account.flow == "refresh_token"
    assert account.refresh_token_file == str(folder / "rt.txt")
    assert account.authorization_url == "https://accounts.example.test/o/oauth2/v2/auth"
    assert read_config(str(folder / "xrelay.toml")).account("main").authorization_url is None


GOOGLE_MISTAKES = {
    "auth_code without secret": ('flow = "auth_code"', 'accounts."gmail".client_secret_file',
                                 "OAuth client secret"),
    "device code": ('flow = "device_code"\nclient_secret_file = "secret.txt"',
                    'accounts."gmail".flow', 'flow = "auth_code"'),
    "client credentials": ('flow = "client_credentials"\nclient_secret_file = "secret.txt"',
                           'accounts."gmail".flow', 'flow = "refresh_token"'),
    "plain http authorization_url": (
        'flow = "auth_code"\nclient_secret_file = "secret.txt"\n'
        'authorization_url = "http://accounts.google.com/o/oauth2/v2/auth"',
        'accounts."gmail".authorization_url', "must be an https:// URL"),
}


@pytest.mark.parametrize("mistake", sorted(GOOGLE_MISTAKES))
def test_google_mistake_named(folder: Path, mistake: str) -> None:
    extra, key, words = GOOGLE_MISTAKES[mistake]
    path = google_config(folder, extra)
    with pytest.raises(ConfigError) as caught:
        read_config(path)
    line = str(caught.value)
    assert line.startswith(path) and key in line and words in line, line


def test_authorization_url_is_for_google_only(folder: Path) -> None:
    path = edit(folder, 'flow = "client_credentials"',
                'flow = "client_credentials"\nauthorization_url = "https://x.test/auth"')
    with pytest.raises(ConfigError) as caught:
        read_config(path)
    assert 'accounts."main".authorization_url' in str(caught.value)
    assert "for Google accounts" in str(caught.value)
