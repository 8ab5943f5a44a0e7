"""
National clouds: C{cloud = "usgov" | "usgov-dod" | "china"} derives the authority, the
SMTP host, the Graph URL and the OAuth scopes from Microsoft's national-cloud
documentation (L{xrelay.clouds}); explicit overrides win.  msal's own requests against
the sandbox identity platform show the scope it asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from xrelay.config import ConfigError
from xrelay.configfile import read_config
from xrelay.sandbox import Sandbox

from tests.tokens.conftest import app_only_account, config_for


def write_config(tmp_path: Path, account_lines: str) -> str:
    (tmp_path / "secret.txt").write_text("s3cret\n")
    (tmp_path / "secret.txt").chmod(0o600)
    path = tmp_path / "xrelay.toml"
    path.write_text(
        "[server]\nhostname = \"relay.example.com\"\n"
        f"state_dir = \"{tmp_path / 'state'}\"\n\n"
        "[[accounts]]\nname = \"main\"\nuser = \"relay@example.com\"\n"
        "tenant = \"example.onmicrosoft.us\"\nclient_id = \"cid\"\n"
        "client_secret_file = \"secret.txt\"\n" + account_lines)
    return str(path)


@pytest.mark.parametrize("cloud, authority, smtp_host, graph_url", [
    ("global", "https://login.microsoftonline.com", "smtp.office365.com",
     "https://graph.microsoft.com/v1.0"),
    ("usgov", "https://login.microsoftonline.us", "smtp.office365.us",
     "https://graph.microsoft.us/v1.0"),
    ("usgov-dod", "https://login.microsoftonline.us", "outlook-dod.office365.us",
     "https://dod-graph.microsoft.us/v1.0"),
    ("china", "https://login.partner.microsoftonline.cn", "smtp.partner.outlook.cn",
     "https://microsoftgraph.chinacloudapi.cn/v1.0"),
])
def test_cloud_derives_the_hosts(tmp_path: Path, cloud: str, authority: str,
                                 smtp_host: str, graph_url: str) -> None:
    account = read_config(write_config(tmp_path, f"cloud = \"{cloud}\"\n")).accounts[0]
    assert (account.cloud, account.authority, account.smtp_host, account.graph_url) == (
        cloud, authority, smtp_host, graph_url)


def test_explicit_overrides_win(tmp_path: Path) -> None:
    account = read_config(write_config(tmp_path, (
        "cloud = \"china\"\nsmtp_host = \"smtp.example.cn\"\n"
        "authority = \"https://login.chinacloudapi.cn\"\n"))).accounts[0]
    assert account.smtp_host == "smtp.example.cn"
    assert account.authority == "https://login.chinacloudapi.cn"
    assert account.graph_url == "https://microsoftgraph.chinacloudapi.cn/v1.0"


def test_unknown_cloud_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        read_config(write_config(tmp_path, "cloud = \"gcc-high\"\n"))
    assert "accounts.\"main\".cloud: 'gcc-high' is not one of: global, usgov, " \
        "usgov-dod, china" in str(e.value)


@pytest.mark.parametrize("cloud, transport, scope", [
    ("usgov", "smtp", "https://outlook.office365.us/.default"),
    ("usgov", "graph", "https://graph.microsoft.us/.default"),
    ("usgov-dod", "smtp", "https://outlook-dod.office365.us/.default"),
    ("china", "smtp", "https://partner.outlook.cn/.default"),
    ("china", "graph", "https://microsoftgraph.chinacloudapi.cn/.default"),
    ("global", "smtp", "https://outlook.office365.com/.default"),
])
@pytest_twisted.inlineCallbacks
def test_msal_asks_the_national_cloud_scope(sandbox: Sandbox, tmp_path: Path,
                                            services: Any, cloud: str, transport: str,
                                            scope: str) -> Any:
    # The authority stays the sandbox's (an explicit override); the scope follows the
    # cloud.
    service = services(config_for(tmp_path / "state", app_only_account(
        sandbox, cloud=cloud, transport=transport)))
    token = yield service.sources["main"].access_token()
    [request] = [r for r in sandbox.identity.requests if r.endpoint == "token"]
    assert request.scope == scope and request.outcome == "ok"
    record = sandbox.identity.check_access_token(token)
    assert record.audience.rstrip("/") == scope[: -len("/.default")]
