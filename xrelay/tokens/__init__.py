"""
OAuth 2.0 access tokens for the upstream accounts: Microsoft (msal: client credentials,
device code, authorization code with PKCE, operator refresh token) and Google (refresh
token grant; "Sign in with Google": authorization code with PKCE), cached encrypted on disk and refreshed ahead of expiry.

Public API: L{TokenService} (wired by C{makeService}), the exceptions deliveries act on
(L{NeedsSignIn}: defer and tell the operator, never bounce; L{TokenUnavailable}: retry
later), L{TokenStatus}, L{DeviceCodePrompt} and L{stored_status} for the C{xrelay}
command.  Nothing in this package may log or expose a token or a secret.
"""

from xrelay.tokens.errors import NeedsSignIn, SignInFailed, TokenError, TokenUnavailable
from xrelay.tokens.microsoft import DeviceCodePrompt
from xrelay.tokens.service import TokenService, stored_status
from xrelay.records import TokenStatus
from xrelay.tokens.status import TokenState

__all__ = [
    "DeviceCodePrompt",
    "NeedsSignIn",
    "SignInFailed",
    "TokenError",
    "TokenService",
    "TokenState",
    "TokenStatus",
    "TokenUnavailable",
    "stored_status",
]
