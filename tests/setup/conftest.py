"""The setup tests use the admin tests' relay world (sandbox + configuration)."""

from tests.admin.conftest import world  # noqa: F401
