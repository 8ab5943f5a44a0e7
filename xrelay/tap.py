"""
Glue between C{twistd xrelay} and L{xrelay.service.makeService}.

The configuration is read and validated in L{Options.postOptions}, before the reactor
runs and before anything listens, so that a mistake ends the process at once with one
line on standard error and exit status 1, never a traceback.  This module must not
import C{twisted.mail}; L{makeService} imports the service lazily.
"""

from __future__ import annotations

import sys

from twisted.application.service import IService
from twisted.python import usage

from xrelay.config import Config, ConfigError
from xrelay.configfile import load_config


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = (
        "Run the xrelay SMTP relay.  The configuration is --config FILE, else "
        "$XRELAY_CONFIG, else /etc/xrelay/xrelay.toml; with none of them, xrelay runs "
        "on 127.0.0.1:2525 ($XRELAY_SANDBOX_PORT for another port) wired to its embedded "
        "sandbox providers (state in ./xrelay-sandbox)."
    )
    optParameters = [
        ["config", "c", None, "The xrelay.toml configuration file."],
    ]

    def postOptions(self) -> None:
        try:
            self["xrelay-config"] = load_config(self["config"])
        except ConfigError as e:
            sys.stderr.write(f"xrelay: {e}\n")
            sys.stderr.flush()
            raise SystemExit(1) from None


def makeService(options: Options) -> IService:
    from xrelay.service import makeService as make
    from xrelay.startup import StartupRefused, make_undumpable

    make_undumpable()  # before any token or key is in memory
    config: Config = options["xrelay-config"]
    try:
        return make(config)
    except StartupRefused as e:  # one line, status 1, no traceback
        sys.stderr.write(f"{e}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None
