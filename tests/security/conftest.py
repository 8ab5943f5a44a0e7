"""
The fixtures the security tests share with tests/inbound and tests/admin.  pytest finds
a fixture that a conftest imports, so the test modules ask for them by parameter name
only (an import of the fixture in the test module itself reads to pyflakes as a name
the parameter then shadows).
"""

from tests.admin.conftest import world  # noqa: F401 (fixture)
from tests.inbound.conftest import certs, relay  # noqa: F401 (fixtures)
from tests.inbound.test_devices import logged  # noqa: F401 (fixture)
