"""
The configuration's values built in Python, as an embedding program or a test builds
them: the same rules as a file (a C{ValueError} naming the field), the same defaults
(Google's above all), and no file system needed.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import attrs
import pytest

from xrelay import configfile, configreader
from xrelay.addresses import SenderPattern
from xrelay.config import (
    GOOGLE_AUTHORITY,
    GOOGLE_AUTHORIZATION_URL,
    AccountConfig,
    AdminConfig,
    Config,
    ConfigError,
    DeliveryConfig,
    InvalidValue,
    ListenerConfig,
    RelayConfig,
    ServerConfig,
    UserConfig,
    account_defaults,
)
from xrelay.configfile import read_config
from xrelay.passwords import hash_password


def microsoft(**changes: Any) -> AccountConfig:
    values: dict[str, Any] = dict(
        name="main", provider="microsoft", user="relay@example.com",
        tenant="example.onmicrosoft.com", client_id="cid",
        client_secret_file="/nowhere/secret.txt")
    values.update(changes)
    return AccountConfig(**values)


def google(**changes: Any) -> AccountConfig:
    values: dict[str, Any] = dict(
        name="gmail", provider="google", user="relay@gmail.example", client_id="cid",
        client_secret_file="/nowhere/secret.txt")
    values.update(changes)
    return AccountConfig(**values)


CERTIFIED = dict(tls_cert="/nowhere/cert.pem", tls_key="/nowhere/key.pem")

#: (what is built, the field the error must name, a phrase of the problem)
BAD_VALUES: list[tuple[str, Callable[[], Any], str, str]] = [
    ("max_connections 0", lambda: ServerConfig(hostname="h", max_connections=0),
     "max_connections", "must be at least 1, not 0"),
    ("max_message_size tiny", lambda: ServerConfig(hostname="h", max_message_size=10),
     "max_message_size", "at least 1024"),
    ("max_errors a string", lambda: ServerConfig(hostname="h", max_errors="20"),
     "max_errors", "whole number"),
    ("max_recipients a boolean", lambda: ServerConfig(hostname="h", max_recipients=True),
     "max_recipients", "whole number"),
    ("tls_min_version 1.4", lambda: ServerConfig(hostname="h", tls_min_version="1.4"),
     "tls_min_version", "'1.0', '1.1', '1.2', '1.3'"),
    ("listener tls_min_version", lambda: ListenerConfig("tcp:25", tls_min_version="2"),
     "tls_min_version", "not '2'"),
    ("endpoint", lambda: ListenerConfig("carrier-pigeon:25"), "endpoint",
     "not a valid endpoint description"),
    ("implicit_tls with starttls",
     lambda: ListenerConfig("tcp:465", implicit_tls=True, starttls=True), "starttls",
     "never offers STARTTLS"),
    ("no listener", lambda: ServerConfig(hostname="h", listen=()), "listen",
     "at least one"),
    ("implicit_tls without a certificate",
     lambda: ServerConfig(hostname="h", listen=(ListenerConfig("tcp:465",
                                                               implicit_tls=True),)),
     "listen[0]", "implicit_tls needs server.tls_cert"),
    ("starttls without a certificate",
     lambda: ServerConfig(hostname="h", listen=(ListenerConfig("tcp:25"),
                                                ListenerConfig("tcp:587", starttls=True))),
     "listen[1].starttls", "STARTTLS needs server.tls_cert"),
    ("tls_cert without tls_key",
     lambda: ServerConfig(hostname="h", tls_cert="/nowhere/cert.pem"), "tls_key",
     "go together"),
    ("haproxy without trusted_proxies",
     lambda: ServerConfig(hostname="h", listen=(ListenerConfig("haproxy:tcp:2525"),)),
     "trusted_proxies", "haproxy: listener"),
    ("trusted_proxies as text",
     lambda: ServerConfig(hostname="h", trusted_proxies=("10.0.0.5/32",)),
     "trusted_proxies[0]", "not a network"),
    ("public allow_networks",
     lambda: RelayConfig(allow_networks=(ipaddress.ip_network("0.0.0.0/0"),)),
     "allow_networks[0]", "open relay"),
    ("bare_lf_end_of_data", lambda: RelayConfig(bare_lf_end_of_data="sometimes"),
     "bare_lf_end_of_data", 'must be "trusted" or "never"'),
    ("relay senders as text", lambda: RelayConfig(senders=("*@example.com",)),
     "senders[0]", "not a sender pattern"),
    ("plaintext password", lambda: UserConfig(name="scanner", password_hash="hunter2"),
     "password_hash", "not a password hash"),
    ("provider", lambda: microsoft(provider="yahoo"), "provider",
     "'yahoo' is not one of: microsoft, google"),
    ("flow", lambda: microsoft(flow="password"), "flow", "is not one of"),
    ("user", lambda: microsoft(user="relay"), "user", "not a mailbox address"),
    ("transport", lambda: microsoft(transport="pigeon"), "transport", "is not one of"),
    ("Graph for Google", lambda: google(transport="graph"), "transport",
     "Graph is Microsoft only"),
    ("Google with device_code", lambda: google(flow="device_code"), "flow",
     "Google accounts use"),
    ("Microsoft without tenant", lambda: microsoft(tenant=None), "tenant",
     "required for Microsoft"),
    ("no client_id", lambda: microsoft(client_id=None), "client_id", "is required"),
    ("certificate without key", lambda: microsoft(certificate_file="/nowhere/c.pem"),
     "certificate_key_file", "go together"),
    ("client_credentials without a secret", lambda: microsoft(client_secret_file=None),
     "client_secret_file", "client_credentials needs"),
    ("Google without a secret", lambda: google(client_secret_file=None),
     "client_secret_file", "Google's token endpoint"),
    ("http authority", lambda: microsoft(authority="http://login.example"),
     "authority", "must be an https:// URL"),
    ("http graph_url", lambda: microsoft(graph_url="http://graph.example"),
     "graph_url", "must be an https:// URL"),
    ("http authorization_url", lambda: google(authorization_url="http://a.example"),
     "authorization_url", "must be an https:// URL"),
    ("authorization_url for Microsoft",
     lambda: microsoft(authorization_url="https://a.example"), "authorization_url",
     "is for Google accounts"),
    ("cloud", lambda: microsoft(cloud="mars"), "cloud", "'mars' is not one of"),
    ("cloud for Google", lambda: google(cloud="usgov"), "cloud",
     "is for Microsoft accounts"),
    ("smtp_port", lambda: microsoft(smtp_port=70000), "smtp_port",
     "70000 is not a TCP port"),
    ("messages_per_minute", lambda: microsoft(messages_per_minute=-1),
     "messages_per_minute", "must be at least 0, not -1"),
    ("client_secret_expires", lambda: microsoft(client_secret_expires="next year"),
     "client_secret_expires", "is not a date"),
    ("send_as_denied", lambda: DeliveryConfig(send_as_denied="drop"), "send_as_denied",
     "'drop' is not one of: bounce, hold"),
    ("bounce_to", lambda: DeliveryConfig(bounce_to="postmaster"), "bounce_to",
     "is not an address"),
    ("first_retry", lambda: DeliveryConfig(first_retry=0), "first_retry",
     "must be at least 1"),
    ("admin listen", lambda: AdminConfig(listen="nonsense"), "listen",
     "not a valid endpoint description"),
    ("default_account unknown",
     lambda: Config(relay=RelayConfig(default_account="other"), accounts=(microsoft(),)),
     "relay.default_account", "no account is named 'other'"),
    ("account twice", lambda: Config(accounts=(microsoft(), microsoft())),
     "accounts[1].name", "defined twice"),
]


@pytest.mark.parametrize("make, field, problem", [case[1:] for case in BAD_VALUES],
                         ids=[case[0] for case in BAD_VALUES])
def test_a_bad_value_built_in_python_is_a_value_error_naming_the_field(
        make: Callable[[], Any], field: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        make()
    assert isinstance(caught.value, InvalidValue)
    assert caught.value.field == field
    assert problem in caught.value.problem
    assert str(caught.value).startswith(f"{field}: ")


def test_a_plaintext_password_is_never_repeated_in_the_error() -> None:
    with pytest.raises(ValueError) as caught:
        AdminConfig(password_hash="correct horse battery staple")
    assert "correct horse" not in str(caught.value)


def test_an_empty_hash_is_a_user_verified_elsewhere_but_never_from_a_file(
        tmp_path: Path) -> None:
    """The realm's users of an embedder's checker have no hash; a file's must."""
    assert UserConfig(name="ldap-user", password_hash="").password_hash == ""
    path = write(tmp_path, """
name = "main"
user = "relay@example.com"
tenant = "example.onmicrosoft.com"
client_id = "cid"
client_secret_file = "secret.txt"
[[users]]
name = "scanner"
password_hash = ""
""")
    with pytest.raises(ConfigError) as caught:
        read_config(path)
    assert caught.value.key == 'users."scanner".password_hash'
    assert "is not a password hash" in caught.value.problem


def test_changing_a_value_is_checked_too() -> None:
    server = ServerConfig(hostname="relay.test")
    with pytest.raises(ValueError, match="max_connections"):
        attrs.evolve(server, max_connections=0)


def test_values_built_in_python_need_no_real_files() -> None:
    """File checks are the reader's (and checks.py's): a test's value is never opened."""
    server = ServerConfig(hostname="h", listen=(ListenerConfig("tcp:465",
                                                               implicit_tls=True),),
                          **CERTIFIED)
    account = microsoft(certificate_file="/nowhere/c.pem",
                        certificate_key_file="/nowhere/k.pem", client_secret_file=None)
    assert server.has_tls and account.certificate_file == "/nowhere/c.pem"


def test_good_values_are_accepted_unchanged() -> None:
    config = Config(
        server=ServerConfig(hostname="relay.test", listen=(
            ListenerConfig("haproxy:tcp:2525"), ListenerConfig("tcp:587", starttls=True,
                                                               tls_min_version="1.0")),
            trusted_proxies=(ipaddress.ip_network("10.0.0.5/32"),), **CERTIFIED),
        relay=RelayConfig(allow_networks=(ipaddress.ip_network("192.168.10.0/24"),),
                          default_account="main"),
        users=(UserConfig(name="scanner", password_hash=hash_password("pw")),),
        accounts=(microsoft(), google()),
        delivery=DeliveryConfig(bounce_to="postmaster@example.com", history_days=0))
    assert config.account("gmail").provider == "google"


def write(tmp_path: Path, account: str) -> str:
    (tmp_path / "secret.txt").write_text("s3cret\n")
    (tmp_path / "token.txt").write_text("1//refresh\n")
    path = tmp_path / "xrelay.toml"
    path.write_text('[server]\nhostname = "relay.test"\n[[accounts]]\n' + account)
    return str(path)


def test_google_defaults_are_the_same_read_from_toml_or_built_in_python(
        tmp_path: Path) -> None:
    path = write(tmp_path, """
name = "gmail"
provider = "google"
user = "relay@gmail.example"
client_id = "cid"
client_secret_file = "secret.txt"
refresh_token_file = "token.txt"
""")
    read = read_config(path).account("gmail")
    built = AccountConfig(name="gmail", provider="google", user="relay@gmail.example",
                          client_id="cid",
                          client_secret_file=str(tmp_path / "secret.txt"),
                          refresh_token_file=str(tmp_path / "token.txt"))
    assert read == built
    # And they are Google's, not Exchange Online's limits and hosts.
    assert (built.flow, built.messages_per_minute, built.recipients_per_day) == (
        "refresh_token", 0, 0)
    assert (built.authority, built.smtp_host, built.authorization_url) == (
        GOOGLE_AUTHORITY, "smtp.gmail.com", GOOGLE_AUTHORIZATION_URL)
    assert built.senders == (SenderPattern.parse("relay@gmail.example"),)


def test_cloud_defaults_are_the_same_read_from_toml_or_built_in_python(
        tmp_path: Path) -> None:
    path = write(tmp_path, """
name = "gcc"
user = "relay@agency.example"
tenant = "agency.onmicrosoft.us"
client_id = "cid"
client_secret_file = "secret.txt"
cloud = "usgov"
smtp_port = 465
""")
    read = read_config(path).account("gcc")
    built = AccountConfig(name="gcc", provider="microsoft", user="relay@agency.example",
                          tenant="agency.onmicrosoft.us", client_id="cid",
                          client_secret_file=str(tmp_path / "secret.txt"),
                          cloud="usgov", smtp_port=465)
    assert read == built
    expected = account_defaults("microsoft", "usgov")
    assert (built.authority, built.smtp_host, built.graph_url) == (
        expected["authority"], expected["smtp_host"], expected["graph_url"])
    assert built.smtp_host == "smtp.office365.us" and built.smtp_implicit_tls
    assert (built.messages_per_minute, built.recipients_per_day) == (30, 10000)


def test_explicit_values_win_over_the_provider_defaults() -> None:
    account = google(messages_per_minute=20, smtp_host="127.0.0.1",
                     authority="https://127.0.0.1:8443")
    assert (account.messages_per_minute, account.smtp_host, account.authority) == (
        20, "127.0.0.1", "https://127.0.0.1:8443")


def test_the_reader_names_the_key_of_a_rule_the_value_enforces(tmp_path: Path) -> None:
    path = write(tmp_path, """
name = "main"
user = "relay@example.com"
tenant = "example.onmicrosoft.com"
client_id = "cid"
client_secret_file = "secret.txt"
recipients_per_day = -5
""")
    with pytest.raises(ConfigError) as caught:
        read_config(path)
    assert str(caught.value) == (f'{path}: accounts."main".recipients_per_day: must be at '
                                 "least 0, not -5")


def test_the_reader_is_still_importable_from_config() -> None:
    from xrelay import config

    for name in ("read_config", "load_config", "find_config_path", "account_from_table",
                 "DEFAULT_CONFIG_PATH", "ENVIRONMENT_VARIABLE"):
        assert getattr(config, name) is getattr(configfile, name)
    with pytest.raises(AttributeError):
        config.no_such_name  # noqa: B018


def test_the_values_import_neither_the_reader_nor_the_reactor() -> None:
    code = ("import sys, xrelay.config\n"
            "xrelay.config.ServerConfig(hostname='h')\n"
            "print(sorted(m for m in sys.modules if m in ('xrelay.configfile', "
            "'twisted.internet.reactor', 'tomllib') or m.startswith('twisted.mail')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("schema", [ListenerConfig, ServerConfig, RelayConfig, UserConfig,
                                    AccountConfig, DeliveryConfig, AdminConfig],
                         ids=lambda schema: schema.__name__)
def test_the_reader_reads_every_field(schema: type) -> None:
    """A field of a type the reader does not take as it is must be read apart."""
    apart = configreader.READ_APART.get(schema, set())
    unread = [f.name for f in attrs.fields(schema) if f.name not in apart
              and configreader.type_name(f) not in configreader._SCALARS]
    assert not unread, f"read these in xrelay/configreader.py: {unread}"
