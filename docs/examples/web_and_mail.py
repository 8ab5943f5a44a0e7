"""
A Twisted web application that also relays mail: one process, one reactor, a
twisted.web site beside xrelay.  The shop's own users (not xrelay's [[users]] table)
sign in to SMTP AUTH, and mail to a competitor's domain is refused.

    WEBSHOP_SMTP_PASSWORD=... python web_and_mail.py xrelay.toml 8080
"""

import hmac
import os
import sys

from twisted.application.service import MultiService
from twisted.application.strports import service as listen
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from xrelay.configfile import read_config
from xrelay.inbound.handler import PolicyHandler
from xrelay.policy import Refusal
from xrelay.service import makeService


@implementer(ICredentialsChecker)
class ShopUsers:
    """The web application's own accounts; here one, its password from the environment."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, passwords):
        self.passwords = passwords  # user name (bytes) -> password (bytes)

    def requestAvatarId(self, credentials):
        expected = self.passwords.get(credentials.username)
        if expected is not None and hmac.compare_digest(expected, credentials.password):
            return defer.succeed(credentials.username.decode())
        return defer.fail(UnauthorizedLogin())


class NoMailToCompetitors(PolicyHandler):
    """The relay's own rules, and one of the shop's: no mail to competitor.example."""

    def rcpt(self, session, recipient, recipients):
        if recipient.lower().endswith("@competitor.example"):
            return Refusal(550, "5.7.1", "Mail to competitor.example is not relayed")
        return super().rcpt(session, recipient, recipients)


class Home(Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"The shop is open; its mail goes out through xrelay.\n"


def main(config_path, http_port):
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    shop_users = ShopUsers({b"webshop": os.environ["WEBSHOP_SMTP_PASSWORD"].encode()})
    application = MultiService()
    relay = makeService(read_config(config_path), reactor=reactor,
                        credentials_checker=shop_users,
                        inbound_handler=NoMailToCompetitors())
    relay.setServiceParent(application)
    web = listen(f"tcp:{http_port}:interface=127.0.0.1", Site(Home()))
    web.setServiceParent(application)
    reactor.callWhenRunning(application.startService)
    reactor.addSystemEventTrigger("before", "shutdown", application.stopService)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
