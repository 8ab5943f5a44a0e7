"""
The rules of the sandbox's Microsoft identity platform: the tenant's state (tenants, app
registrations and their credentials, users, every token and code issued) and its
decisions: which client is who (secret, expired secret, certificate assertion), who may
sign in and consent, and who gets which token with which claims, refused with the
C{AADSTS} code Entra ID gives (L{TokenError}).

L{xrelay.sandbox.identity} puts the v2.0 endpoints' wire format (JSON bodies, HTTP
statuses, redirects, outages) on top of L{IdentityRules}; the SMTP server and Graph ask
L{IdentityRules.check_access_token} whether a bearer token is one this platform issued.
This module must never log or put into an error description a secret, a token, a code
or a password, and never writes a response itself.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
from typing import Any, Callable, Iterable

import attrs
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from . import webtoken
from .errors import TokenError
from .google import GoogleIdentity
from .identityrecords import (
    APP_ROLES, ASSERTION_TYPE, META_TENANTS, REFUSALS, AccessToken, App, AuthorizationCode, DeviceCode, RefreshToken,
    Tenant, TokenRequest, User, _client_secret, _secret, resource_and_permissions,
)


@attrs.define
class IdentityRules:
    """
    Microsoft identity platform v2.0 state and the decisions of its token endpoint.

    Settable knobs for tests: L{access_token_lifetime}, L{refresh_token_lifetime},
    L{device_code_lifetime}, L{device_code_interval}, L{rotate_refresh_tokens};
    L{fail_next} and L{unavailable_status} make the endpoints fail like an outage.
    """

    now: Callable[[], float] = time.time
    base_url: str = "https://127.0.0.1"
    access_token_lifetime: int = 3599
    refresh_token_lifetime: int = 90 * 86400
    device_code_lifetime: int = 900
    device_code_interval: int = 5
    auth_code_lifetime: int = 600
    #: Azure AD keeps old refresh tokens valid; the sandbox rotates strictly by
    #: default so that a client that keeps using a superseded one is caught.
    rotate_refresh_tokens: bool = True
    #: When set, every token/devicecode request fails with this HTTP status (500 or 503).
    unavailable_status: int | None = None
    tenants: dict[str, Tenant] = attrs.field(factory=dict)
    apps: dict[str, App] = attrs.field(factory=dict)
    users: dict[str, User] = attrs.field(factory=dict)
    access_tokens: dict[str, AccessToken] = attrs.field(factory=dict, repr=False)
    refresh_tokens: dict[str, RefreshToken] = attrs.field(factory=dict, repr=False)
    device_codes: dict[str, DeviceCode] = attrs.field(factory=dict, repr=False)
    auth_codes: dict[str, AuthorizationCode] = attrs.field(factory=dict, repr=False)
    requests: list[TokenRequest] = attrs.field(factory=list)
    google: GoogleIdentity = attrs.field(default=attrs.Factory(lambda self: GoogleIdentity(now=self.now), takes_self=True))
    _failures: list[tuple[int, str | None]] = attrs.field(factory=list, repr=False)
    #: Token answers still to be cut short (L{cut_next}).
    cut_answers: int = 0
    _signing_key: rsa.RSAPrivateKey = attrs.field(
        factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), repr=False
    )
    key_id: str = attrs.field(factory=lambda: webtoken.b64url_encode(secrets.token_bytes(15)))

    # -- directory -------------------------------------------------------------------

    def add_tenant(self, domain: str, tenant_id: str | None = None) -> Tenant:
        """The tenant with this domain (created if new); tenants are found by domain or id."""
        existing = self.tenant(domain)
        if existing is not None:
            return existing
        tenant = Tenant(tenant_id or str(uuid.uuid4()), domain)
        self.tenants[tenant.id] = tenant
        self.tenants[domain.lower()] = tenant
        return tenant

    def tenant(self, name: str) -> Tenant | None:
        return self.tenants.get(name) or self.tenants.get(name.lower())

    def register_app(
        self,
        tenant: str,
        client_id: str | None = None,
        client_secret: str | None = None,
        certificate_pem: bytes | str | None = None,
        redirect_uris: Iterable[str] = (),
        public_client: bool = False,
        name: str = "xrelay",
    ) -> App:
        """
        Register an application.  A confidential app given neither a secret nor a
        certificate gets a generated secret (C{app.client_secret}).
        """
        t = self.add_tenant(tenant)
        app = App(client_id or str(uuid.uuid4()), t, name, redirect_uris=list(redirect_uris), public_client=public_client)
        if client_secret is not None:
            app.client_secrets.append(client_secret)
        if certificate_pem is not None:
            pem = certificate_pem.encode() if isinstance(certificate_pem, str) else certificate_pem
            app.certificates.append(x509.load_pem_x509_certificate(pem))
        if not public_client and not app.client_secrets and not app.certificates:
            app.client_secrets.append(_client_secret())
        self.apps[app.client_id] = app
        return app

    def add_client_secret(self, client_id: str, secret: str | None = None) -> str:
        secret = secret or _client_secret()
        self.apps[client_id].client_secrets.append(secret)
        return secret

    def refuse_app(self, client_id: str, code: int | None) -> None:
        """
        Refuse every token request of this app with AADSTS C{code} (one of L{REFUSALS});
        C{None} lifts it.
        """
        if code is not None and code not in REFUSALS:
            raise ValueError(f"no documented refusal {code}; one of {sorted(REFUSALS)}")
        self.apps[client_id].refusal = code

    def expire_client_secret(self, client_id: str, secret: str | None = None) -> None:
        """
        The app's secret (all of them when C{secret} is C{None}) passes its expiry date:
        the token endpoint then answers C{invalid_client}, AADSTS7000222.
        """
        app = self.apps[client_id]
        expiring = [s for s in app.client_secrets if secret is None or s == secret]
        app.client_secrets = [s for s in app.client_secrets if s not in expiring]
        app.expired_client_secrets.extend(expiring)

    def add_user(self, tenant: str, upn: str, password: str, display_name: str | None = None) -> User:
        t = self.add_tenant(tenant)
        user = User(upn, t, password, display_name or upn.split("@")[0])
        self.users[upn.lower()] = user
        return user

    def user(self, upn: str) -> User | None:
        return self.users.get(upn.lower())

    # -- switches for tests ----------------------------------------------------------

    def fail_next(self, count: int = 1, status: int = 503, retry_after: str | None = None) -> None:
        """The next C{count} token/devicecode requests fail with HTTP C{status} (500/503)."""
        self._failures.extend([(status, retry_after)] * count)

    def cut_next(self, count: int = 1) -> None:
        """
        The next C{count} token answers are cut short mid-body (what a proxy dropping
        the connection, or an overloaded front end, delivers): a 200 whose body is not
        JSON, and holds the first part of a real token.
        """
        self.cut_answers += count

    def take_cut(self) -> bool:
        """Whether this token answer is to be cut short (used by the web layer)."""
        if self.cut_answers <= 0:
            return False
        self.cut_answers -= 1
        return True

    def approve_device_code(self, user_code: str, upn: str) -> None:
        """What a person does on the device-login page: sign in as C{upn} and accept."""
        flow = self._device_by_user_code(user_code)
        if flow is None:
            raise KeyError(f"no pending device code {user_code!r}")
        user = self.user(upn)
        if user is None:
            raise KeyError(f"no user {upn!r}")
        flow.approved_by = user.upn

    def decline_device_code(self, user_code: str) -> None:
        flow = self._device_by_user_code(user_code)
        if flow is None:
            raise KeyError(f"no pending device code {user_code!r}")
        flow.declined = True

    def expire_device_codes(self) -> None:
        for flow in self.device_codes.values():
            flow.expires_at = self.now() - 1

    def pending_device_codes(self) -> list[DeviceCode]:
        """Device codes waiting for a person, newest last: tests approve C{[-1].user_code}."""
        now = self.now()
        return [f for f in self.device_codes.values() if f.approved_by is None and f.expires_at > now and not f.declined]

    def pending_flow(self, user_code: str) -> DeviceCode | None:
        """The device flow a person's code names, if any (for the pages)."""
        return self._device_by_user_code(user_code)

    def _device_by_user_code(self, user_code: str) -> DeviceCode | None:
        wanted = user_code.replace("-", "").replace(" ", "").upper()
        for flow in self.device_codes.values():
            if flow.user_code == wanted and not flow.redeemed:
                return flow
        return None

    def revoke(self, what: str) -> None:
        """
        Revoke a refresh token, or every refresh token of a user (by UPN), as an
        admin's C{revokeSignInSessions} does: further use gets C{invalid_grant}.
        Access tokens already issued stay valid until they expire, as in Azure AD.
        """
        record = self.refresh_tokens.get(what)
        if record is not None:
            record.valid = False
            record.revoked_by_user = True
            return
        user = self.user(what)
        if user is None:
            raise KeyError("neither a known refresh token nor a known user")
        user.tokens_valid_from = self.now()
        for rt in self.refresh_tokens.values():
            if rt.upn.lower() == user.upn.lower():
                rt.valid = False
                rt.revoked_by_user = True

    def expire_access_tokens(self) -> None:
        """Every access token issued so far is now expired (Exchange answers 535)."""
        past = self.now() - 1
        for token in self.access_tokens.values():
            token.expires_at = min(token.expires_at, past)

    def issued_secrets(self) -> set[str]:
        """
        Every secret the sandbox issued or knows (tokens, client secrets, codes,
        passwords), so that tests can assert none of them leaked into logs or files.
        """
        found: set[str] = set()
        found.update(self.access_tokens)
        found.update(self.refresh_tokens)
        found.update(self.device_codes)
        found.update(self.auth_codes)
        for app in self.apps.values():
            found.update(app.client_secrets)
            found.update(app.expired_client_secrets)
        found.update(u.password for u in self.users.values())
        found.update(self._id_tokens)
        found.update(self.google.issued_secrets())
        return found

    _id_tokens: list[str] = attrs.field(factory=list, repr=False)
    #: Called when a person signs in for an app (authorize page, device login) with the
    #: app, the user and the scopes asked; raises L{TokenError} to refuse (AADSTS90094
    #: "The grant requires admin permission." when only an admin may consent).  Set by
    #: L{xrelay.sandbox.entra.Directory}.
    consent_policy: Callable[[App, User, tuple[str, ...]], None] | None = attrs.field(default=None, repr=False)

    def issuer(self, tenant_id: str) -> str:
        return f"{self.base_url}/{tenant_id}/v2.0"

    # -- checks used by Exchange and Graph ------------------------------------------

    def check_access_token(self, token: str) -> AccessToken | None:
        """
        The record of C{token} if this platform issued it, its signature verifies and
        it has not expired; else C{None}.
        """
        record = self.access_tokens.get(token)
        if record is None or record.revoked or record.expires_at <= self.now():
            return None
        try:
            webtoken.verify(token, self._signing_key.public_key())
        except webtoken.MalformedToken:
            return None
        return record

    def _check_consent(self, client_id: str, user: User, scopes: tuple[str, ...]) -> None:
        """Whether this person may use (or consent to) the app for these scopes (L{consent_policy})."""
        if self.consent_policy is not None:
            self.consent_policy(self.apps[client_id], user, scopes)

    # -- grants ----------------------------------------------------------------------

    def _client_credentials(self, tenant_segment: str, form: dict[str, str]) -> dict[str, Any]:
        app = self._app(tenant_segment, form.get("client_id", ""))
        self._authenticate_client(app, form, required=True)
        if not app.has_service_principal:
            # As Entra ID words it for an app registration without an enterprise app in
            # the tenant; listed at https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
            raise TokenError(
                "invalid_client", 7000229,
                f"The client application {app.client_id} is missing service principal in the tenant {app.tenant.id}. See instructions here: https://go.microsoft.com/fwlink/?linkid=2225119",
                401,
            )
        scope = form.get("scope", "")
        if not scope:
            raise TokenError("invalid_request", 900144, "The request body must contain the following parameter: 'scope'.")
        scopes = scope.split()
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            raise TokenError(
                "invalid_scope", 1002012,
                f"The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).",
            )
        resource = scopes[0][: -len("/.default")]
        if resource not in APP_ROLES:
            raise TokenError(
                "invalid_resource", 500011,
                f"The resource principal named {resource} was not found in the tenant named {app.tenant.domain}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.",
            )
        roles = app.roles.get(resource, ())
        now = int(self.now())
        claims = {
            "aud": resource, "iss": f"https://sts.windows.net/{app.tenant.id}/", "iat": now, "nbf": now,
            "exp": now + self.access_token_lifetime, "aio": _secret(12), "app_displayname": app.name,
            "appid": app.client_id, "appidacr": "2" if form.get("client_assertion") else "1",
            "idp": f"https://sts.windows.net/{app.tenant.id}/", "oid": app.service_principal_id,
            "rh": _secret(12), "roles": list(roles), "sub": app.service_principal_id, "tid": app.tenant.id,
            "uti": _secret(16), "ver": "1.0",
        }
        if not roles:
            # Entra ID leaves the claim out when no app role was granted (an app set up
            # without admin consent): https://learn.microsoft.com/en-us/entra/identity-platform/access-token-claims-reference
            del claims["roles"]
        token = self._issue_access(claims, app.client_id, app.tenant.id, resource, frozenset(roles), None)
        return {
            "token_type": "Bearer",
            "expires_in": self.access_token_lifetime,
            "ext_expires_in": self.access_token_lifetime,
            "access_token": token,
        }

    def _refresh_token(self, tenant_segment: str, form: dict[str, str]) -> dict[str, Any]:
        app = self._app(tenant_segment, form.get("client_id", ""))
        self._authenticate_client(app, form, required=not app.public_client)
        presented = form.get("refresh_token", "")
        if not presented:
            raise TokenError("invalid_request", 900144, "The request body must contain the following parameter: 'refresh_token'.")
        record = self.refresh_tokens.get(presented)
        if record is None:
            raise TokenError("invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
        if record.client_id != app.client_id:
            raise TokenError("invalid_grant", 70000, "The refresh token was issued to a different client.")
        if record.revoked_by_user:
            holder = self.user(record.upn)
            raise TokenError(
                "invalid_grant", 50173,
                f"The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password. The grant was issued on '{_iso(record.issued_at)}' and the TokensValidFrom date (before which tokens are not valid) for this user is '{_iso(holder.tokens_valid_from if holder else self.now())}'.",
            )
        if not record.valid or record.expires_at <= self.now():
            raise TokenError(
                "invalid_grant", 70008,
                "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
            )
        user = self.user(record.upn)
        if user is None:
            raise TokenError("invalid_grant", 50034, "The user account does not exist in the directory.")
        scopes = tuple(form.get("scope", "").split()) or ("openid", "profile", "offline_access")
        if self.rotate_refresh_tokens:
            record.valid = False
        return self._delegated_response(app, user, scopes, form, nonce=None, with_refresh=True)

    def _authorization_code(self, tenant_segment: str, form: dict[str, str]) -> dict[str, Any]:
        app = self._app(tenant_segment, form.get("client_id", ""))
        self._authenticate_client(app, form, required=not app.public_client)
        record = self.auth_codes.get(form.get("code", ""))
        if record is None or record.client_id != app.client_id:
            raise TokenError("invalid_grant", 70000, "The provided value for the 'code' parameter is not valid.")
        if record.redeemed:
            raise TokenError(
                "invalid_grant", 54005,
                "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
            )
        if record.expires_at <= self.now():
            raise TokenError(
                "invalid_grant", 70008,
                "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
            )
        if form.get("redirect_uri", "") != record.redirect_uri:
            raise TokenError(
                "invalid_grant", 500112,
                "The reply address does not match the reply address provided when requesting Authorization code.",
            )
        if record.code_challenge is not None:
            verifier = form.get("code_verifier", "")
            if not verifier:
                raise TokenError("invalid_request", 501481, "The Code_Verifier does not match the code_challenge supplied in the authorization request.")
            if record.code_challenge_method == "S256":
                computed = webtoken.b64url_encode(hashlib.sha256(verifier.encode("ascii")).digest())
            else:
                computed = verifier
            if not secrets.compare_digest(computed, record.code_challenge):
                raise TokenError("invalid_grant", 501481, "The Code_Verifier does not match the code_challenge supplied in the authorization request.")
        record.redeemed = True
        user = self.user(record.upn)
        assert user is not None
        scopes = tuple(form.get("scope", "").split()) or record.scopes
        return self._delegated_response(app, user, scopes, form, nonce=record.nonce, with_refresh=True)

    def _device_code_grant(self, tenant_segment: str, form: dict[str, str]) -> dict[str, Any]:
        app = self._app(tenant_segment, form.get("client_id", ""))
        flow = self.device_codes.get(form.get("device_code", "") or form.get("code", ""))
        if flow is None or flow.client_id != app.client_id:
            raise TokenError("invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
        if flow.redeemed:
            raise TokenError(
                "invalid_grant", 54005,
                "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
            )
        if flow.expires_at <= self.now():
            raise TokenError("expired_token", 70020, "The provided value for the input parameter 'device_code' is not valid. This device code has expired.")
        if flow.declined:
            raise TokenError("authorization_declined", 70000, "The request was denied because the user declined to authorize it.")
        if flow.approved_by is None:
            raise TokenError("authorization_pending", 70016, "OAuth 2.0 device flow error. Authorization is pending. Continue polling.")
        self._authenticate_client(app, form, required=not app.public_client)
        flow.redeemed = True
        user = self.user(flow.approved_by)
        assert user is not None
        return self._delegated_response(app, user, flow.scopes, form, nonce=None, with_refresh=True)

    # -- helpers ---------------------------------------------------------------------

    def _path_tenant(self, tenant_segment: str) -> Tenant | None:
        if tenant_segment.lower() in META_TENANTS:
            return None
        return self.tenant(tenant_segment)

    def _app(self, tenant_segment: str, client_id: str) -> App:
        if not client_id:
            raise TokenError("invalid_request", 900144, "The request body must contain the following parameter: 'client_id'.")
        if tenant_segment.lower() not in META_TENANTS and self.tenant(tenant_segment) is None:
            raise TokenError(
                "invalid_request", 90002,
                f"Tenant '{tenant_segment}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant.",
            )
        app = self.apps.get(client_id)
        tenant = self._path_tenant(tenant_segment)
        if app is not None and app.usable_from > self.now():
            app = None  # created moments ago: not yet replicated to the token service
        if app is None or (tenant is not None and app.tenant.id != tenant.id):
            shown = tenant_segment if tenant is None else tenant.id
            raise TokenError(
                "unauthorized_client", 700016,
                f"Application with identifier '{client_id}' was not found in the directory '{shown}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
            )
        return app

    def _authenticate_client(self, app: App, form: dict[str, str], required: bool) -> None:
        secret = form.get("client_secret")
        assertion = form.get("client_assertion")
        if secret is None and assertion is None:
            if required:
                raise TokenError(
                    "invalid_client", 7000218,
                    "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
                    401,
                )
            return
        if secret is not None:
            if any(secrets.compare_digest(secret.encode(), s.encode()) for s in app.expired_client_secrets):
                # As Entra ID words it, e.g. https://github.com/dotnet/sign/issues/849;
                # listed at https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
                raise TokenError(
                    "invalid_client", 7000222,
                    f"The provided client secret keys for app '{app.client_id}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.",
                    401,
                )
            if not any(secrets.compare_digest(secret.encode(), s.encode()) for s in app.usable_secrets(self.now())):
                raise TokenError(
                    "invalid_client", 7000215,
                    f"Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{app.client_id}'.",
                    401,
                )
            return
        assert assertion is not None
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise TokenError("invalid_request", 50027, "JWT token is invalid or malformed.")
        self._check_assertion(app, assertion)

    def _check_assertion(self, app: App, assertion: str) -> None:
        from cryptography.hazmat.primitives import hashes

        try:
            header, _ = webtoken.unverified(assertion)
        except webtoken.MalformedToken:
            raise TokenError("invalid_client", 50027, "JWT token is invalid or malformed.", 401) from None
        chosen = None
        for cert in app.usable_certificates(self.now()):
            # msal sends the thumbprints base64url with padding; Azure AD accepts both.
            if str(header.get("x5t#S256", "")).rstrip("=") == webtoken.b64url_encode(cert.fingerprint(hashes.SHA256())) or str(
                header.get("x5t", "")
            ).rstrip("=") == webtoken.b64url_encode(cert.fingerprint(hashes.SHA1())):
                chosen = cert
                break
        if chosen is None:
            raise TokenError(
                "invalid_client", 700027,
                f"The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{header.get('x5t#S256') or header.get('x5t')}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{app.client_id}'.]",
                401,
            )
        public_key = chosen.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise TokenError("invalid_client", 700027, "Client assertion failed signature validation.", 401)
        try:
            claims = webtoken.verify(assertion, public_key)
        except webtoken.MalformedToken:
            raise TokenError("invalid_client", 700027, "Client assertion failed signature validation.", 401) from None
        now = self.now()
        if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
            raise TokenError("invalid_client", 700021, "Client assertion application identifier doesn't match 'client_id' parameter.", 401)
        if not (claims.get("nbf", now) - 300 <= now <= claims.get("exp", 0) + 300):
            raise TokenError("invalid_client", 700024, "Client assertion is not within its valid time range.", 401)
        audience = claims.get("aud")
        if not (isinstance(audience, str) and audience.startswith(self.base_url + "/") and audience.endswith("/oauth2/v2.0/token")):
            raise TokenError("invalid_client", 700212, "Client assertion audience claim does not match Realm issuer.", 401)

    def authenticate(self, username: str, password: str) -> User:
        """A person's sign-in on a sandbox page; L{TokenError} (AADSTS50034/50126) if wrong."""
        return self._authenticate("common", username, password)

    def _authenticate(self, tenant_segment: str, username: str, password: str) -> User:
        user = self.user(username)
        tenant = self._path_tenant(tenant_segment)
        if user is None or (tenant is not None and user.tenant.id != tenant.id):
            raise TokenError("invalid_grant", 50034, f"The user account {username} does not exist in the directory. To sign into this application, the account must be added to the directory.")
        if not secrets.compare_digest(user.password.encode(), password.encode()):
            raise TokenError("invalid_grant", 50126, "Error validating credentials due to invalid username or password.")
        return user

    def _delegated_response(
        self, app: App, user: User, scopes: tuple[str, ...], form: dict[str, str], nonce: str | None, with_refresh: bool
    ) -> dict[str, Any]:
        resource, permissions, granted = resource_and_permissions(scopes)
        if app.granted_scopes is not None and not set(permissions) <= app.granted_scopes | app.user_granted_scopes.get(user.oid, set()):
            # An app created through Graph has only the delegated permissions an admin
            # granted (oauth2PermissionGrants); the sandbox tenant lets no user consent.
            error, text = REFUSALS[65001]
            raise TokenError(error, 65001, text.format(client_id=app.client_id, name=app.name))
        now = int(self.now())
        tid = user.tenant.id
        claims = {
            "aud": resource, "iss": f"https://sts.windows.net/{tid}/", "iat": now, "nbf": now,
            "exp": now + self.access_token_lifetime, "acr": "1", "aio": _secret(12), "amr": ["pwd"],
            "app_displayname": app.name, "appid": app.client_id, "appidacr": "0" if app.public_client else "1",
            "name": user.display_name, "oid": user.oid, "scp": " ".join(permissions), "sub": _secret(16),
            "tid": tid, "unique_name": user.upn, "upn": user.upn, "uti": _secret(16), "ver": "1.0",
        }
        token = self._issue_access(claims, app.client_id, tid, resource, frozenset(permissions), user.upn)
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join(granted),
            "expires_in": self.access_token_lifetime,
            "ext_expires_in": self.access_token_lifetime,
            "access_token": token,
        }
        if with_refresh and "offline_access" in scopes:
            rt = RefreshToken("1.A" + _secret(300), app.client_id, user.upn, self.now(), self.now() + self.refresh_token_lifetime)
            self.refresh_tokens[rt.token] = rt
            body["refresh_token"] = rt.token
        if "openid" in scopes:
            id_claims = {
                "aud": app.client_id, "iss": self.issuer(tid), "iat": now, "nbf": now, "exp": now + 3600,
                "name": user.display_name, "oid": user.oid, "preferred_username": user.upn,
                "rh": _secret(12), "sub": _secret(16), "tid": tid, "uti": _secret(16), "ver": "2.0",
            }
            if nonce:
                id_claims["nonce"] = nonce
            id_token = webtoken.encode(id_claims, self._signing_key, self.key_id)
            self._id_tokens.append(id_token)
            body["id_token"] = id_token
        if form.get("client_info") == "1":
            body["client_info"] = webtoken.b64url_encode(json.dumps({"uid": user.oid, "utid": tid}).encode())
        return body

    def _issue_access(
        self, claims: dict[str, Any], client_id: str, tenant_id: str, audience: str,
        permissions: frozenset[str], upn: str | None,
    ) -> str:
        token = webtoken.encode(claims, self._signing_key, self.key_id, {"x5t": self.key_id})
        self.access_tokens[token] = AccessToken(
            token, client_id, tenant_id, audience, permissions, upn, float(claims["exp"]), float(claims["iat"])
        )
        return token


def _iso(when: float) -> str:
    return time.strftime("%m/%d/%Y %H:%M:%S", time.gmtime(when))
