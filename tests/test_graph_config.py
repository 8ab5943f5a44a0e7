"""graph_large_messages: validated per cloud, and check-config warns of a small route."""

from __future__ import annotations

import pytest

from xrelay.addresses import SenderPattern
from xrelay.config import (
    GRAPH_SINGLE_REQUEST_MESSAGE,
    AccountConfig,
    Config,
    InvalidValue,
    ServerConfig,
)
from xrelay.routing import largest_route_size, route_size_limit


def graph(**kw: object) -> AccountConfig:
    values: dict[str, object] = dict(
        name="g", provider="microsoft", user="relay@example.com", transport="graph",
        senders=(SenderPattern.parse("*"),), tenant="example.onmicrosoft.com",
        client_id="c", client_secret_file="secret.txt")
    values.update(kw)
    return AccountConfig(**values)  # type: ignore[arg-type]


def test_upload_sessions_are_refused_where_graph_has_none() -> None:
    for cloud in ("usgov", "usgov-dod"):
        with pytest.raises(InvalidValue) as e:
            graph(cloud=cloud, graph_large_messages="upload_session")
        assert "graph_large_messages" in str(e.value) and cloud in str(e.value)
    assert graph(cloud="china", graph_large_messages="upload_session")
    assert graph().graph_large_messages == "refuse"  # no Mail.ReadWrite unless asked


def test_route_limits_size_and_the_warning() -> None:
    smtp = graph(name="s", transport="smtp")
    small = graph()
    large = graph(name="l", graph_large_messages="upload_session")
    config = Config(server=ServerConfig(max_message_size=36700160),
                    accounts=(small, smtp, large))
    assert route_size_limit(config, small)[0] == GRAPH_SINGLE_REQUEST_MESSAGE
    assert route_size_limit(config, smtp) == (36700160, "server.max_message_size")
    assert route_size_limit(config, large)[0] == 36700160
    assert largest_route_size(Config(accounts=(small,))) == GRAPH_SINGLE_REQUEST_MESSAGE
    assert largest_route_size(config) == 36700160
    [warning] = [w for w in config.warnings() if "graph_large_messages" in w]
    assert "accounts[0]" in warning and str(GRAPH_SINGLE_REQUEST_MESSAGE) in warning
    big = Config(server=ServerConfig(max_message_size=200 * 1024 * 1024), accounts=(large,))
    assert route_size_limit(big, large)[0] == 150 * 1024 * 1024
