import pytest

from tests.delivery.delivery_harness import Harness


@pytest.fixture
def harness(tmp_path) -> Harness:
    return Harness(tmp_path)
