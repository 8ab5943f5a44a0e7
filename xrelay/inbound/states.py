"""
The states of one inbound SMTP connection, shared by the protocol and its command
mixins.  Nothing else lives here.
"""

from __future__ import annotations

# The states of one connection.  PROXY: waiting for the PROXY header; COMMAND: reading
# commands; AUTH_*: reading a SASL response; DATA: reading message lines; CLOSED.
PROXY, COMMAND, AUTH_PLAIN, AUTH_LOGIN_USER, AUTH_LOGIN_PASSWORD, DATA, CLOSED = (
    "proxy", "command", "auth-plain", "auth-login-user", "auth-login-password", "data",
    "closed",
)
