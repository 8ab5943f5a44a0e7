"""
The sandbox's Google OAuth 2.0 token endpoint (C{POST /google/token}) for Gmail/Workspace
accounts that use a long-lived refresh token.

Google refresh tokens are minted by tests (L{GoogleIdentity.mint_refresh_token}) since
the consent screen is out of scope; the endpoint answers exactly as
C{https://oauth2.googleapis.com/token} does.  Must never log a token or client secret.
"""

from __future__ import annotations

import secrets
import time
from typing import Callable

import attrs

from .errors import Response, google_error

GMAIL_SCOPE = "https://mail.google.com/"


@attrs.define
class GoogleClient:
    client_id: str
    client_secret: str = attrs.field(repr=False)


@attrs.define
class GoogleRefreshToken:
    token: str = attrs.field(repr=False)
    client_id: str
    email: str
    scope: str
    valid: bool = True


@attrs.define
class GoogleAccessToken:
    token: str = attrs.field(repr=False)
    client_id: str
    email: str
    scope: str
    expires_at: float


@attrs.define
class GoogleIdentity:
    """Google clients, refresh tokens and the access tokens issued from them."""

    now: Callable[[], float] = time.time
    access_token_lifetime: int = 3599
    clients: dict[str, GoogleClient] = attrs.field(factory=dict)
    refresh_tokens: dict[str, GoogleRefreshToken] = attrs.field(factory=dict, repr=False)
    access_tokens: dict[str, GoogleAccessToken] = attrs.field(factory=dict, repr=False)

    def register_client(self, client_id: str | None = None, client_secret: str | None = None) -> GoogleClient:
        client = GoogleClient(
            client_id or f"{secrets.randbelow(10**12):012d}-{secrets.token_hex(16)}.apps.googleusercontent.com",
            client_secret or "GOCSPX-" + secrets.token_urlsafe(21),
        )
        self.clients[client.client_id] = client
        return client

    def mint_refresh_token(self, email: str, client_id: str, scope: str = GMAIL_SCOPE) -> str:
        """What the consent screen would give an installed app for C{email}."""
        if client_id not in self.clients:
            raise KeyError(f"no Google client {client_id!r}")
        token = "1//0" + secrets.token_urlsafe(72)
        self.refresh_tokens[token] = GoogleRefreshToken(token, client_id, email, scope)
        return token

    def revoke(self, what: str) -> None:
        """Revoke a refresh token, or all of an address's (the user removed access)."""
        for record in self.refresh_tokens.values():
            if record.token == what or record.email.lower() == what.lower():
                record.valid = False

    def expire_access_tokens(self) -> None:
        past = self.now() - 1
        for record in self.access_tokens.values():
            record.expires_at = min(record.expires_at, past)

    def check_access_token(self, token: str) -> GoogleAccessToken | None:
        record = self.access_tokens.get(token)
        if record is None or record.expires_at <= self.now():
            return None
        return record

    def issued_secrets(self) -> set[str]:
        found = set(self.refresh_tokens) | set(self.access_tokens)
        found.update(c.client_secret for c in self.clients.values())
        return found

    def token(self, form: dict[str, str]) -> Response:
        """C{POST /token}, form-encoded, as C{oauth2.googleapis.com} answers it."""
        grant_type = form.get("grant_type", "")
        if grant_type != "refresh_token":
            if not grant_type:
                return google_error(400, "invalid_request", "Missing required parameter: grant_type")
            return google_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        client = self.clients.get(form.get("client_id", ""))
        if client is None:
            return google_error(401, "invalid_client", "The OAuth client was not found.")
        if not secrets.compare_digest(form.get("client_secret", "").encode(), client.client_secret.encode()):
            return google_error(401, "invalid_client", "Unauthorized")
        if not form.get("refresh_token"):
            return google_error(400, "invalid_request", "Missing required parameter: refresh_token")
        record = self.refresh_tokens.get(form["refresh_token"])
        if record is None or not record.valid or record.client_id != client.client_id:
            return google_error(400, "invalid_grant", "Token has been expired or revoked.")
        token = "ya29.a0" + secrets.token_urlsafe(120)
        self.access_tokens[token] = GoogleAccessToken(
            token, client.client_id, record.email, record.scope, self.now() + self.access_token_lifetime
        )
        return Response(
            200,
            {"access_token": token, "expires_in": self.access_token_lifetime, "scope": record.scope, "token_type": "Bearer"},
        )
