"""
The C{twistd xrelay} plugin.

This module is imported by every C{twistd} run that scans plugins, whatever plugin it
then runs, so it must stay tiny and lazy: it may not import C{twisted.mail} (which
imports the reactor and would break C{twistd -r asyncio} for everybody) nor any of
xrelay's machinery.  L{ServiceMaker} imports C{xrelay.tap} only when xrelay is run.
"""

from twisted.application.service import ServiceMaker

xrelay = ServiceMaker(
    "xrelay",
    "xrelay.tap",
    "SMTP relay for the LAN that delivers to Exchange Online and Gmail with OAuth 2.0",
    "xrelay",
)
