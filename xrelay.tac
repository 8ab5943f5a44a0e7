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

try:
    config = load_config(None)
except ConfigError as e:
    sys.stderr.write(f"xrelay: {e}\n")
    raise SystemExit(1)

application = Application("xrelay")
makeService(config).setServiceParent(application)
