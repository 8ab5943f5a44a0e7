"""
The relay as `twistd -ny` runs it for the command tests: makeService for the
configuration in $XRELAY_CONFIG, plus the control channel when makeService does not
add one itself yet.
"""

from twisted.application.service import Application
from twisted.internet import reactor

from xrelay.config import load_config
from xrelay.operations.control import ControlService
from xrelay.service import makeService

relay = makeService(load_config(None))
if getattr(relay, "control", None) is None:
    relay.control = ControlService(relay, reactor=reactor)
    relay.control.setServiceParent(relay)
application = Application("xrelay")
relay.setServiceParent(application)
