"""
Run xrelay with C{twistd -ny xrelay.tac}.

The configuration is found as for C{twistd xrelay}: $XRELAY_CONFIG, else
/etc/xrelay/xrelay.toml, else the embedded sandbox default.  A configuration mistake
stops here with one line and exit status 1.
"""

import sys

from twisted.application.service import Application

from xrelay.config import ConfigError, load_config
from xrelay.service import makeService
from xrelay.startup import StartupRefused

try:
    config = load_config(None)
except ConfigError as e:
    sys.stderr.write(f"xrelay: {e}\n")
    raise SystemExit(1)

application = Application("xrelay")
try:
    makeService(config).setServiceParent(application)
except StartupRefused as e:  # an unsafe state_dir: one line, status 1
    sys.stderr.write(f"{e}\n")
    raise SystemExit(1)
