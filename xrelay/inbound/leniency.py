"""
What the relay tolerates from real devices on the trusted LAN, and from nobody else.

Printers and scanners are not RFC-clean: some end DATA with C{LF "." LF}, some send
C{MAIL} without ever saying C{HELO}, some say C{HELO} with nothing or with a sentence
(C{HELO my printer}).  Refusing them loses scans without anyone being told, so clients
admitted by C{relay.allow_networks} (and not authenticated) get these tolerances;
everyone else (the internet, authenticated submission) gets the strict protocol.  This
is Postfix's answer to the same problem: C{smtpd_forbid_bare_newline_exclusions =
$mynetworks}.

The tolerated end of DATA is safe against SMTP smuggling toward the upstream because
what goes upstream is always rebuilt: the spool holds only CRLF lines, and the transport
dot-stuffs them, so the upstream sees exactly the messages the relay saw, never one more.
It is not harmless for a trusted host that forwards content written by others (a web
form, an old MTA that does not normalise bare LF): text with C{LF "." LF} in it ends
the message there, and what follows is read as commands from a trusted client, a whole
second message an outsider wrote.  Such a host belongs on a listener (or the relay) with
C{bare_lf_end_of_data = "never"}.

These are pure decisions (no I/O); the protocol asks them and logs what it tolerated.
"""

from __future__ import annotations

from xrelay.config import Config, ListenerConfig, UserConfig
from xrelay.policy import client_in_networks

__all__ = ["bare_lf_ends_data", "lenient_greeting", "BARE_LF_HINT", "auth_without_tls"]

#: The sentence every strict reply or log line about bare line ends carries, so that an
#: administrator finds the setting from the device's error page.
BARE_LF_HINT = ("a \".\" line ended by a bare LF ends DATA only for clients in "
                "relay.allow_networks (relay.bare_lf_end_of_data = \"trusted\"); "
                "end the data with CRLF.CRLF")


def trusted_device(config: Config, client_address: str, user: UserConfig | None) -> bool:
    """A client admitted by network, not by SMTP AUTH: the LAN's devices."""
    return user is None and client_in_networks(config, client_address)


def bare_lf_ends_data(config: Config, client_address: str, user: UserConfig | None,
                      listener: ListenerConfig | None = None) -> bool:
    """
    Whether a single-dot line ends DATA whatever its line endings, for this client on
    this listener (its own C{bare_lf_end_of_data}, else C{relay.bare_lf_end_of_data}).
    """
    setting = getattr(listener, "bare_lf_end_of_data", None) or config.relay.bare_lf_end_of_data
    return setting == "trusted" and trusted_device(config, client_address, user)


def auth_without_tls(config: Config, listener: ListenerConfig, client_address: str
                     ) -> bool:
    """
    Whether this client may use AUTH on this connection without TLS: when TLS is not
    required for AUTH at all, or when the listener lets the trusted LAN's devices log
    in in clear (C{auth_without_tls = "trusted"}: printers set to "SMTP AUTH on, SSL
    off").
    """
    if not config.server.require_tls_for_auth:
        return True
    return (listener.auth_without_tls == "trusted"
            and client_in_networks(config, client_address))


def lenient_greeting(config: Config, client_address: str) -> bool:
    """Whether MAIL without HELO, and HELO with an empty or odd name, are accepted."""
    return client_in_networks(config, client_address)


def strict_end_of_data_hint(dot_lookalikes: int, bare_line_ends: int) -> str | None:
    """
    Why a strict client's DATA has not ended yet, when bare line ends are the likely
    cause: for the timeout reply and its log line (never a silent "timeout").
    """
    if dot_lookalikes:
        return (f"{dot_lookalikes} \".\" line(s) with bare LF line ends did not end the "
                f"data: {BARE_LF_HINT}")
    if bare_line_ends:
        return (f"the message has {bare_line_ends} bare LF line ends and no CRLF.CRLF "
                f"yet: {BARE_LF_HINT}")
    return None
