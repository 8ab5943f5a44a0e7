"""
xrelay: an SMTP relay for the LAN that delivers to Exchange Online and Gmail with OAuth 2.0.

Importing this package must stay cheap and must not import C{twisted.mail} (which installs
a reactor): the twistd plugin imports it to describe itself.
"""

__version__ = "0.1.0"
