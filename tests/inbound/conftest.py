from __future__ import annotations

from typing import Any, Iterator

import pytest
import pytest_twisted

from tests.inbound.harness import Certificates, Running, certificates, start
# Fixtures defined beside their first tests, for every inbound test (asked for by
# parameter name, so the test modules need not import them).
from tests.inbound.test_devices import logged  # noqa: F401 (fixture)
from tests.inbound.test_smuggling_end_to_end import sandbox  # noqa: F401 (fixture)


@pytest.fixture
def certs(tmp_path: Any) -> Certificates:
    return certificates(tmp_path)


@pytest.fixture
def relay() -> Iterator[Any]:
    """Call C{(yield relay(config, ...))} to start a service; it is stopped afterwards."""
    started: list[Running] = []

    @pytest_twisted.inlineCallbacks
    def run(config: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        running = yield start(config, **kwargs)
        started.append(running)
        return running

    yield run
    for running in started:
        pytest_twisted.blockon(running.service.stopService())
