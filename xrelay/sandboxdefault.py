"""
The sandbox default's configuration beyond L{xrelay.config.sandbox_default}: the managed
drop-ins the setup wizard wrote in its state folder, and the endpoints of the sandbox
that runs there (recorded at start in C{sandbox-endpoints.json}), so that C{[setup]} and
the managed accounts point at the sandbox tenant in the daemon and in the C{xrelay}
command alike.

Reads and writes only public data (URLs, ports, the CA's path); never a secret.  Must not
import the reactor.
"""

from __future__ import annotations

import json
import os
from typing import Any

import attrs

from xrelay.config import Config, InvalidValue, SetupConfig, sandbox_default

__all__ = ["SANDBOX_ENDPOINTS", "sandbox_setup", "sandbox_with_dropins",
           "write_sandbox_endpoints"]


def sandbox_with_dropins(directory: str | None = None) -> Config:
    """
    The sandbox default, with the drop-ins the setup wizard wrote in its state_dir; when
    a sandbox ran here (L{SANDBOX_ENDPOINTS} exists), C{[setup]} and the managed
    accounts point at it, as the running relay points them.
    """
    from xrelay.dropins import read_dropins, with_dropins

    main = sandbox_default(directory)
    config = with_dropins(main, read_dropins(main.server.state_dir))
    assert config.sandbox_dir is not None
    try:
        with open(os.path.join(config.sandbox_dir, SANDBOX_ENDPOINTS), "rb") as f:
            endpoints = json.load(f)
    except (OSError, ValueError):
        return config
    if not isinstance(endpoints, dict):
        return config
    try:
        accounts = tuple(attrs.evolve(
            a, authority=endpoints["authority"], smtp_host=endpoints["smtp_host"],
            smtp_port=int(endpoints["smtp_port"]), graph_url=endpoints["graph_url"],
            ca_file=endpoints["ca_file"], smtp_implicit_tls=False)
            if a.provider == "microsoft" else a for a in config.accounts)
        return attrs.evolve(config, setup=sandbox_setup(endpoints), accounts=accounts)
    except (KeyError, TypeError, ValueError, InvalidValue):
        return config


#: Where a running sandbox default writes its endpoints, in the sandbox folder: the
#: C{xrelay} command (C{xrelay setup} with no configuration) reads them.
SANDBOX_ENDPOINTS = "sandbox-endpoints.json"


def write_sandbox_endpoints(directory: str, sandbox: Any) -> dict[str, Any]:
    """Record the started sandbox's endpoints (public data: URLs, ports, the CA path)."""
    endpoints = {"authority": sandbox.authority, "graph_url": sandbox.graph_url,
                 "exchange_admin_url": f"{sandbox.authority}/adminapi/beta",
                 "ca_file": sandbox.ca_file, "smtp_host": sandbox.smtp_host,
                 "smtp_port": sandbox.smtp_port}
    path = os.path.join(directory, SANDBOX_ENDPOINTS)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(endpoints, f)
    os.replace(path + ".tmp", path)
    return endpoints


def sandbox_setup(endpoints: dict[str, Any]) -> SetupConfig:
    """C{[setup]} for the sandbox tenant: the setup signs in there and registers there."""
    return SetupConfig(authority=endpoints["authority"], graph_url=endpoints["graph_url"],
                       exchange_admin_url=endpoints["exchange_admin_url"],
                       ca_file=endpoints["ca_file"])
