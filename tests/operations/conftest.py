"""
The operations tests use the admin tests' relay world (sandbox + configuration) and the
daemons started by tests/operations/test_commands.py's helpers.
"""

from tests.admin.conftest import world  # noqa: F401
from tests.operations.test_commands import daemons  # noqa: F401
