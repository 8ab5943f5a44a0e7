"""
The configuration keys of the limits: read from the file, defaults from the attrs
class, and one-line errors naming the key.
"""

from __future__ import annotations

import ipaddress

import pytest

from xrelay.config import ConfigError, ServerConfig
from xrelay.configfile import read_config
from xrelay.passwords import hash_password

ACCOUNT = ('[[accounts]]\nname = "main"\nuser = "relay@example.com"\n'
           'tenant = "example.onmicrosoft.com"\nclient_id = "x"\nflow = "device_code"\n')


def config_file(tmp_path, server: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "xrelay.toml"
    path.write_text(f'[server]\nhostname = "relay.test"\nstate_dir = "{tmp_path}"\n'
                    f"{server}\n\n{ACCOUNT}")
    return str(path)


def test_defaults_and_every_key_documented() -> None:
    import attrs

    server = ServerConfig(hostname="x")
    assert (server.trusted_proxies, server.proxy_header_timeout,
            server.max_connections_per_network, server.reserved_connections,
            server.idle_timeout_before_mail, server.max_junk_commands,
            server.max_errors) == ((), 5, 50, 20, 60, 100, 20)
    for name in ("trusted_proxies", "proxy_header_timeout", "max_connections_per_network",
                 "reserved_connections", "idle_timeout_before_mail", "max_junk_commands",
                 "max_errors"):
        assert attrs.fields_dict(ServerConfig)[name].metadata["doc"]


def test_keys_are_read(tmp_path) -> None:
    config = read_config(config_file(tmp_path, (
        'trusted_proxies = ["10.0.0.5/32", "2001:db8::/64"]\nproxy_header_timeout = 3\n'
        "max_connections_per_network = 80\nreserved_connections = 0\n"
        "idle_timeout_before_mail = 30\nmax_junk_commands = 10\nmax_errors = 5")))
    server = config.server
    assert server.trusted_proxies == (ipaddress.ip_network("10.0.0.5/32"),
                                      ipaddress.ip_network("2001:db8::/64"))
    assert (server.proxy_header_timeout, server.max_connections_per_network,
            server.reserved_connections, server.idle_timeout_before_mail,
            server.max_junk_commands, server.max_errors) == (3, 80, 0, 30, 10, 5)


def test_a_small_max_connections_alone_is_fine(tmp_path) -> None:
    # The default reserved share (20) is halved to fit, not an error nobody wrote.
    assert read_config(config_file(tmp_path, "max_connections = 10")).server.max_connections == 10


@pytest.mark.parametrize("line, key, problem", [
    ('trusted_proxies = ["10.0.0.5/24"]', "server.trusted_proxies[0]",
     "'10.0.0.5/24' is not a network in CIDR form"),
    ("reserved_connections = 200", "server.reserved_connections",
     "must be less than server.max_connections (200)"),
    ("max_errors = 0", "server.max_errors", "must be at least 1, not 0"),
])
def test_mistakes_name_the_key(tmp_path, line, key, problem) -> None:
    path = config_file(tmp_path, line)
    with pytest.raises(ConfigError) as raised:
        read_config(path)
    assert str(raised.value).startswith(f"{path}: {key}: {problem}")


@pytest.mark.parametrize("admin, warned", [
    ('listen = "tcp:8025:interface=127.0.0.1"', False),
    ('listen = "tcp6:8025:interface=\\\\:\\\\:1"', False),
    ('listen = "tcp:8025"', True),
    ('listen = "tcp:8025:interface=192.168.10.2"', True),
    ('listen = "tcp:8025"\npublic_url = "https://relay.example.com"', False),
])
def test_plain_http_admin_page_off_loopback_is_warned_about(tmp_path, admin, warned) -> None:
    path = config_file(tmp_path, "")
    with open(path, "a") as f:
        f.write(f'\n[admin]\n{admin}\npassword_hash = "{hash_password("x", log2_n=4)}"\n')
    from xrelay.checks import warnings as all_warnings

    warnings = [w for w in all_warnings(read_config(path)) if "admin.listen" in w]
    assert bool(warnings) == warned, warnings
    if warned:
        assert warnings[0].startswith(f"{path}: admin.listen: ")
        assert "is reachable from the network without TLS" in warnings[0]
