"""
The sandbox's Google OAuth 2.0 endpoints for Gmail/Workspace accounts: the token endpoint
(C{POST /google/token}: the refresh token and authorization code grants) and the
authorization endpoint (C{/google/o/oauth2/v2/auth}: the sign-in page of Google's
"OAuth 2.0 for Web Server Applications" flow, with PKCE).

Refresh tokens come either from a sign-in on the authorization page by a user a test
registered (L{GoogleIdentity.add_user}) or are minted directly by tests
(L{GoogleIdentity.mint_refresh_token}).  Answers and error bodies are those of
C{https://oauth2.googleapis.com/token} and C{https://accounts.google.com}.  Must never log
a token, code, password or client secret.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any, Callable
from urllib.parse import urlencode

import attrs
from cryptography.hazmat.primitives.asymmetric import rsa

from . import webtoken
from .errors import Response, google_error

GMAIL_SCOPE = "https://mail.google.com/"
ISSUER = "https://accounts.google.com"


class GoogleAuthorizeError(Exception):
    """
    An authorization request Google answers with its own error page instead of a
    redirect (unknown client, unregistered redirect URI, malformed request):
    C{Error 400: redirect_uri_mismatch}.
    """

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(status, error, description)
        self.status = status
        self.error = error
        self.description = description


class GoogleSignInError(Exception):
    """A wrong email or password on the sign-in page; the text Google shows."""


@attrs.define
class GoogleClient:
    client_id: str
    client_secret: str = attrs.field(repr=False)
    redirect_uris: tuple[str, ...] = ()
    name: str = "xrelay"


@attrs.define
class GoogleUser:
    email: str
    password: str = attrs.field(repr=False)
    sub: str = attrs.field(factory=lambda: str(10**20 + secrets.randbelow(10**20)))


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


@attrs.frozen
class GoogleAuthorizeRequest:
    """The validated parameters of an authorization request, carried by the sign-in form."""

    client_id: str
    redirect_uri: str
    scope: str
    state: str
    code_challenge: str
    code_challenge_method: str
    access_type: str
    prompt: str
    login_hint: str


@attrs.define
class GoogleAuthorizationCode:
    code: str = attrs.field(repr=False)
    client_id: str
    email: str
    redirect_uri: str
    scope: str
    code_challenge: str | None
    code_challenge_method: str | None
    offline: bool
    consent: bool
    expires_at: float
    redeemed: bool = False


@attrs.define
class GoogleIdentity:
    """Google clients, users, authorization codes, and the tokens issued from them."""

    now: Callable[[], float] = time.time
    access_token_lifetime: int = 3599
    auth_code_lifetime: int = 600
    clients: dict[str, GoogleClient] = attrs.field(factory=dict)
    users: dict[str, GoogleUser] = attrs.field(factory=dict)
    refresh_tokens: dict[str, GoogleRefreshToken] = attrs.field(factory=dict, repr=False)
    access_tokens: dict[str, GoogleAccessToken] = attrs.field(factory=dict, repr=False)
    auth_codes: dict[str, GoogleAuthorizationCode] = attrs.field(factory=dict, repr=False)
    #: (client_id, email) pairs that have consented: Google sends a refresh token only
    #: on the first consent, or again when the request says C{prompt=consent}.
    consented: set[tuple[str, str]] = attrs.field(factory=set)
    #: every authorization request seen (its parameters, no secret among them)
    authorize_requests: list[GoogleAuthorizeRequest] = attrs.field(factory=list)
    _id_tokens: list[str] = attrs.field(factory=list, repr=False)
    _signing_key: rsa.RSAPrivateKey | None = attrs.field(default=None, repr=False)
    key_id: str = attrs.field(factory=lambda: secrets.token_hex(20))

    def register_client(self, client_id: str | None = None, client_secret: str | None = None,
                        redirect_uris: tuple[str, ...] | list[str] = ()) -> GoogleClient:
        client = GoogleClient(
            client_id or f"{secrets.randbelow(10**12):012d}-{secrets.token_hex(16)}.apps.googleusercontent.com",
            client_secret or "GOCSPX-" + secrets.token_urlsafe(21),
            tuple(redirect_uris),
        )
        self.clients[client.client_id] = client
        return client

    def add_user(self, email: str, password: str) -> GoogleUser:
        """A Google account that can sign in on the authorization page."""
        user = GoogleUser(email, password)
        self.users[email.lower()] = user
        return user

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
        found = set(self.refresh_tokens) | set(self.access_tokens) | set(self.auth_codes)
        found.update(c.client_secret for c in self.clients.values())
        found.update(u.password for u in self.users.values())
        found.update(self._id_tokens)
        return found

    # -- the authorization endpoint -------------------------------------------------

    def authorize_request(self, params: dict[str, str]) -> GoogleAuthorizeRequest:
        """
        Validate an authorization request; raise L{GoogleAuthorizeError} for what Google
        shows as an error page rather than redirecting back.
        """
        client_id = params.get("client_id", "")
        if not client_id:
            raise GoogleAuthorizeError(400, "invalid_request", "Missing required parameter: client_id")
        client = self.clients.get(client_id)
        if client is None:
            raise GoogleAuthorizeError(401, "invalid_client", "The OAuth client was not found.")
        redirect_uri = params.get("redirect_uri", "")
        if not redirect_uri:
            raise GoogleAuthorizeError(400, "invalid_request", "Missing required parameter: redirect_uri")
        if redirect_uri not in client.redirect_uris:
            raise GoogleAuthorizeError(
                400, "redirect_uri_mismatch",
                "You can't sign in to this app because it doesn't comply with Google's OAuth 2.0 policy. "
                f"If you're the app developer, register the redirect URI in the Google Cloud Console. "
                f"Request details: redirect_uri={redirect_uri}",
            )
        if not params.get("response_type"):
            raise GoogleAuthorizeError(400, "invalid_request", "Required parameter is missing: response_type")
        if params["response_type"] != "code":
            raise GoogleAuthorizeError(400, "unsupported_response_type",
                                       f"Invalid response_type: {params['response_type']}")
        if not params.get("scope"):
            raise GoogleAuthorizeError(400, "invalid_request", "Missing required parameter: scope")
        challenge = params.get("code_challenge", "")
        method = params.get("code_challenge_method", "") or ("plain" if challenge else "")
        if challenge and method not in ("S256", "plain"):
            raise GoogleAuthorizeError(400, "invalid_request", f"Invalid code_challenge_method: {method}")
        access_type = params.get("access_type", "online")
        if access_type not in ("online", "offline"):
            raise GoogleAuthorizeError(400, "invalid_request", f"Invalid access_type: {access_type}")
        request = GoogleAuthorizeRequest(
            client_id, redirect_uri, params["scope"], params.get("state", ""), challenge, method,
            access_type, params.get("prompt", ""), params.get("login_hint", ""),
        )
        self.authorize_requests.append(request)
        return request

    def sign_in(self, request: GoogleAuthorizeRequest, email: str, password: str) -> str:
        """
        A person signed in and consented: the URL to send the browser back to, with
        C{state}, C{code} and C{scope} as Google sends them.  Raises L{GoogleSignInError}
        for an unknown account or a wrong password.
        """
        user = self.users.get(email.strip().lower())
        if user is None:
            raise GoogleSignInError("Couldn't find your Google Account")
        if not secrets.compare_digest(password.encode(), user.password.encode()):
            raise GoogleSignInError("Wrong password. Try again or click Forgot password to reset it.")
        code = GoogleAuthorizationCode(
            "4/0A" + secrets.token_urlsafe(60), request.client_id, user.email, request.redirect_uri,
            request.scope, request.code_challenge or None, request.code_challenge_method or None,
            request.access_type == "offline", "consent" in request.prompt.split(),
            self.now() + self.auth_code_lifetime,
        )
        self.auth_codes[code.code] = code
        query = {}
        if request.state:
            query["state"] = request.state
        query.update(code=code.code, scope=request.scope, authuser="0",
                     prompt="consent" if "consent" in request.prompt.split() else "none")
        return _with_query(request.redirect_uri, query)

    def decline(self, request: GoogleAuthorizeRequest) -> str:
        """The person pressed Cancel on the consent screen."""
        query = {"error": "access_denied"}
        if request.state:
            query["state"] = request.state
        return _with_query(request.redirect_uri, query)

    def client_name(self, client_id: str) -> str:
        return self.clients[client_id].name

    # -- the token endpoint ---------------------------------------------------------

    def token(self, form: dict[str, str]) -> Response:
        """C{POST /token}, form-encoded, as C{oauth2.googleapis.com} answers it."""
        grant_type = form.get("grant_type", "")
        if grant_type not in ("refresh_token", "authorization_code"):
            if not grant_type:
                return google_error(400, "invalid_request", "Missing required parameter: grant_type")
            return google_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        client = self.clients.get(form.get("client_id", ""))
        if client is None:
            return google_error(401, "invalid_client", "The OAuth client was not found.")
        if not secrets.compare_digest(form.get("client_secret", "").encode(), client.client_secret.encode()):
            return google_error(401, "invalid_client", "Unauthorized")
        if grant_type == "authorization_code":
            return self._authorization_code(client, form)
        if not form.get("refresh_token"):
            return google_error(400, "invalid_request", "Missing required parameter: refresh_token")
        record = self.refresh_tokens.get(form["refresh_token"])
        if record is None or not record.valid or record.client_id != client.client_id:
            return google_error(400, "invalid_grant", "Token has been expired or revoked.")
        token = self._issue_access(client, record.email, record.scope)
        return Response(
            200,
            {"access_token": token, "expires_in": self.access_token_lifetime, "scope": record.scope, "token_type": "Bearer"},
        )

    def _authorization_code(self, client: GoogleClient, form: dict[str, str]) -> Response:
        if not form.get("code"):
            return google_error(400, "invalid_request", "Missing required parameter: code")
        record = self.auth_codes.get(form["code"])
        if (record is None or record.client_id != client.client_id or record.redeemed
                or record.expires_at <= self.now()):
            return google_error(400, "invalid_grant", "Bad Request")
        if form.get("redirect_uri", "") != record.redirect_uri:
            return google_error(400, "redirect_uri_mismatch", "Bad Request")
        if record.code_challenge is not None:
            verifier = form.get("code_verifier", "")
            if not verifier:
                return google_error(400, "invalid_grant", "Missing code verifier.")
            if record.code_challenge_method == "S256":
                computed = webtoken.b64url_encode(hashlib.sha256(verifier.encode("ascii", "replace")).digest())
            else:
                computed = verifier
            if not secrets.compare_digest(computed.encode(), record.code_challenge.encode()):
                return google_error(400, "invalid_grant", "Invalid code verifier.")
        record.redeemed = True
        body: dict[str, Any] = {
            "access_token": self._issue_access(client, record.email, record.scope),
            "expires_in": self.access_token_lifetime,
            "scope": record.scope,
            "token_type": "Bearer",
        }
        pair = (client.client_id, record.email.lower())
        if record.offline and (pair not in self.consented or record.consent):
            body["refresh_token"] = self.mint_refresh_token(record.email, client.client_id, record.scope)
        self.consented.add(pair)
        if "openid" in record.scope.split():
            body["id_token"] = self._id_token(client, record.email, record.scope)
        return Response(200, body)

    def _issue_access(self, client: GoogleClient, email: str, scope: str) -> str:
        token = "ya29.a0" + secrets.token_urlsafe(120)
        self.access_tokens[token] = GoogleAccessToken(
            token, client.client_id, email, scope, self.now() + self.access_token_lifetime)
        return token

    def _id_token(self, client: GoogleClient, email: str, scope: str) -> str:
        if self._signing_key is None:
            self._signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        user = self.users.get(email.lower())
        now = int(self.now())
        claims: dict[str, Any] = {
            "iss": ISSUER, "azp": client.client_id, "aud": client.client_id,
            "sub": user.sub if user else str(abs(hash(email))), "iat": now, "exp": now + 3600,
        }
        if "email" in scope.split():
            claims.update(email=email, email_verified=True)
        token = webtoken.encode(claims, self._signing_key, self.key_id)
        self._id_tokens.append(token)
        return token


def _with_query(uri: str, query: dict[str, str]) -> str:
    return uri + ("&" if "?" in uri else "?") + urlencode(query)
