import pytest

from tests.delivery.delivery_harness import Harness
# The started sandbox providers, shared with the transport tests (one definition).
from tests.transport.conftest import sandbox  # noqa: F401 (fixture)


@pytest.fixture
def harness(tmp_path) -> Harness:
    return Harness(tmp_path)
