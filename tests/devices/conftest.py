"""The admin tests' relay world (a sandbox, a configuration file, the real relay)."""

from tests.admin.conftest import world  # noqa: F401 (fixture)
