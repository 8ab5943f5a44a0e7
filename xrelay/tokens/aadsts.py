"""
What the Microsoft identity platform's refusals mean for an account, and what to do.

The token endpoint refuses with an OAuth error (C{invalid_client}, C{invalid_grant}, ...)
and an C{AADSTS} number in C{error_codes} and at the head of C{error_description}.  The
OAuth error alone is too coarse to act on: C{invalid_client} is a wrong secret, an
expired secret, or an unknown certificate, and each has a different fix.  L{REFUSALS} is
the one table from code to meaning, the account's state and the fix; L{explain} applies
it.  Meanings are Microsoft's (the "Microsoft Entra authentication and authorization
error codes" reference, cited per row); the fixes are written for an xrelay operator.

No I/O here, and nothing that could hold a secret: the input is the platform's error
text and the account's configuration (paths and ids only).
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import attrs

from xrelay.tokens.status import TokenState

__all__ = ["Refusal", "REFUSALS", "explain", "aadsts_codes", "known_refusal"]

#: Microsoft Learn: Microsoft Entra authentication and authorization error codes.
REFERENCE = "https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes"


@attrs.frozen
class Refusal:
    """
    One row of the table.

    @ivar codes: the AADSTS numbers this row explains.
    @ivar meaning: what the platform says happened, in a few words.
    @ivar state: the account's state (L{TokenState}) while this lasts.
    @ivar fix: what the operator does; C{{name}}-style fields are filled from the
        account (see L{explain}).
    """

    codes: tuple[int, ...]
    meaning: str
    state: TokenState
    fix: str


S = TokenState

#: AADSTS code -> meaning -> state -> fix.  Sources: each row's comment.
REFUSALS: tuple[Refusal, ...] = (
    # AADSTS7000215 InvalidClientSecretProvided
    # https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
    Refusal((7000215,), "the client secret is not one of the app's secrets",
            S.CLIENT_SECRET_REJECTED,
            "put the secret's Value (not its Secret ID) from Entra ID > App registrations > "
            "{client_id} > Certificates & secrets into {client_secret_file}; xrelay reads "
            "it again by itself within seconds (or run `xrelay reload`)"),
    # AADSTS7000222 InvalidClientSecretExpiredKeysProvided ("The provided client secret
    # keys for app '...' are expired. Visit the Azure portal to create new keys for your
    # app: https://aka.ms/NewClientSecret, ..."), as seen in
    # https://github.com/dotnet/sign/issues/849 and
    # https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
    Refusal((7000222,), "the client secret has expired", S.CLIENT_SECRET_EXPIRED,
            "create a new client secret for app {client_id} (Entra ID > App registrations "
            "> Certificates & secrets > New client secret, https://aka.ms/NewClientSecret), "
            "write its Value into {client_secret_file} and its expiry date as "
            "client_secret_expires in xrelay.toml"),
    # AADSTS700027 (certificate not registered / signature validation failed),
    # AADSTS700024 (assertion not within its valid time range), AADSTS700021 (assertion
    # application identifier mismatch), AADSTS50027 (invalid JWT)
    # https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
    Refusal((700027, 700024, 700021, 50027), "the certificate (client assertion) was "
            "not accepted", S.CERTIFICATE_REJECTED,
            "upload {certificate_file} (its public part) to app {client_id} under "
            "Certificates & secrets > Certificates, check that it has not expired and "
            "that this machine's clock is right"),
    # AADSTS700016 UnauthorizedClient_DoesNotMatchRequest: application not found in the
    # directory/tenant
    # https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
    Refusal((700016,), "no application with this client id in the tenant",
            S.APP_NOT_FOUND,
            "check client_id = \"{client_id}\" and tenant = \"{tenant}\" against the app "
            "registration's Overview page (Application (client) ID, Directory (tenant) ID)"),
    # AADSTS65001 DelegationDoesNotExist: the user or administrator has not consented
    # https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
    Refusal((65001,), "the permission was never consented to", S.CONSENT_MISSING,
            "in Entra ID > App registrations > {client_id} > API permissions, add "
            "{permission} and press \"Grant admin consent\""),
    # AADSTS50076 UserStrongAuthClientAuthNRequired, AADSTS50079
    # UserStrongAuthEnrollmentRequired: multifactor authentication is required
    # https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
    Refusal((50076, 50079), "multifactor authentication is required for this sign-in",
            S.MFA_REQUIRED,
            "sign in again interactively (`xrelay login {name}` or Sign in on the admin "
            "page) and complete the MFA prompt; or exclude the relay's mailbox from the "
            "MFA policy, or use an app-only (client_credentials) account"),
    # AADSTS700082 ExpiredOrRevokedGrantInactiveToken ("The refresh token has expired due
    # to inactivity", https://github.com/blobfile/blobfile/issues/93); AADSTS70008
    # ExpiredOrRevokedGrant
    # https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
    Refusal((700082, 70008), "the refresh token has expired", S.REFRESH_TOKEN_EXPIRED,
            "run `xrelay login {name}` (or Sign in on the admin page){refresh_file}"),
    # AADSTS53003 BlockedByConditionalAccess
    # https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
    Refusal((53003,), "a Conditional Access policy blocks this sign-in",
            S.CONDITIONAL_ACCESS,
            "look up the sign-in of {who} in Entra ID > Sign-in logs (Conditional Access "
            "tab) and exclude it from the blocking policy, or allow this relay's address"),
    # AADSTS7000218 InvalidClient "The request body must contain the following
    # parameter: 'client_assertion' or 'client_secret'." (a delegated sign-in of an app
    # whose "Allow public client flows" is off; app-only: no secret was sent)
    # https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
    # https://learn.microsoft.com/en-us/entra/identity-platform/msal-client-application-configuration
    Refusal((7000218,), "the app registration does not allow this sign-in without a "
            "secret", S.APP_MISCONFIGURED, "{public_client_fix}"),
    # AADSTS7000112 UnauthorizedClientApplicationDisabled "Application is disabled."
    # https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
    # https://learn.microsoft.com/troubleshoot/entra/entra-id/app-integration/error-code-aadsts7000112-application-is-disabled
    Refusal((7000112,), "the application is disabled in the tenant", S.APP_MISCONFIGURED,
            "in the Microsoft Entra admin center > Enterprise applications > the app "
            "{client_id} > Properties, set \"Enabled for users to sign-in?\" to Yes (a "
            "new sign-in does not help until then)"),
    # AADSTS50011 InvalidReplyTo "The redirect URI '...' specified in the request does
    # not match the redirect URIs configured for the application '...'."
    # https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
    Refusal((50011,), "the redirect URI is not one the app registration lists",
            S.APP_MISCONFIGURED,
            "add the admin page's redirect URI (shown on its sign-in page: "
            "<admin URL>/signin/callback) to app {client_id} under Entra ID > App "
            "registrations > Authentication > Web > Redirect URIs, or set "
            "admin.public_url to the address the browser uses"),
    # AADSTS500011 InvalidResourceServicePrincipalNotFound "The resource principal named
    # https://outlook.office365.com was not found in the tenant named ..." (no Exchange
    # Online in the tenant, or a national-cloud tenant asked on the global cloud)
    # https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
    Refusal((500011,), "the tenant has no Exchange Online (or Graph) service principal "
            "for this cloud", S.APP_NOT_FOUND,
            "check that tenant \"{tenant}\" has Exchange Online licences (Microsoft 365 "
            "admin center > Billing > Licenses) and that cloud = \"{cloud}\" is the "
            "tenant's cloud (a GCC High tenant needs cloud = \"usgov\"); no sign-in "
            "helps until then"),
    # AADSTS90002 InvalidTenantName "Tenant '...' not found. Check to make sure you have
    # the correct tenant ID and are signing into the correct cloud."
    # https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
    Refusal((90002,), "no such tenant in this cloud", S.TENANT_NOT_FOUND,
            "check tenant = \"{tenant}\" (the Directory (tenant) ID or the "
            "*.onmicrosoft.com domain from the app registration's Overview page) and "
            "cloud = \"{cloud}\""),
    # AADSTS50057 UserDisabled "The user account is disabled.", AADSTS50053 IdsLocked
    # (locked after too many failed sign-ins, or sign-ins from blocked IPs), AADSTS50055
    # InvalidPasswordExpiredPassword "The password is expired."
    # https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
    Refusal((50057, 50053, 50055), "the user account is disabled, locked or its "
            "password has expired", S.USER_BLOCKED,
            "in the Microsoft 365 admin center > Users > Active users > {user}: unblock "
            "sign-in, or wait for the lockout to end (Entra smart lockout), or have the "
            "user change the expired password; then run `xrelay login {name}` (or Sign "
            "in on the admin page)"),
    # AADSTS530003 "Your device is required to be managed to access this resource.",
    # AADSTS50158 ExternalSecurityChallenge "External security challenge was not
    # satisfied." (both Conditional Access requirements the relay cannot meet)
    # https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
    Refusal((530003, 50158), "a Conditional Access requirement (managed device, external "
            "MFA) was not met", S.CONDITIONAL_ACCESS,
            "look up the sign-in of {who} in Entra ID > Sign-in logs (Conditional Access "
            "tab) and exclude it from the policy requiring a managed device or an "
            "external security challenge; the relay cannot satisfy either"),
    # AADSTS50173 FreshTokenNeeded (grant revoked), AADSTS50126 (invalid credentials),
    # AADSTS70043 (sign-in frequency): a person must sign in again
    # https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
    Refusal((50173, 50126, 70043), "the sign-in was revoked or is no longer valid",
            S.NEEDS_SIGN_IN, "run `xrelay login {name}` or use Sign in on the admin "
            "page{refresh_file}"),
)

_BY_CODE: dict[int, Refusal] = {code: row for row in REFUSALS for code in row.codes}
_CODE = re.compile(r"AADSTS(\d+)")


def aadsts_codes(text: str) -> list[int]:
    """The AADSTS numbers named in an error text, in order."""
    return [int(m) for m in _CODE.findall(text or "")]


def known_refusal(text: str) -> bool:
    """
    Whether the text names an AADSTS refusal of the table: a person must act, whatever
    the OAuth error beside it (AADSTS50011 and 90002 come as C{invalid_request}, which
    alone would read as worth retrying).
    """
    return any(code in _BY_CODE for code in aadsts_codes(text))


def _fields(account: Any) -> dict[str, str]:
    graph = getattr(account, "transport", "smtp") == "graph"
    app_only = account.flow == "client_credentials"
    if graph:
        permission = "Microsoft Graph > Mail.Send (Application)" if app_only else \
            "Microsoft Graph > Mail.Send (Delegated)"
    else:
        permission = ("Office 365 Exchange Online > SMTP.SendAsApp (Application)"
                      if app_only else "Microsoft Graph > SMTP.Send (Delegated)")
    refresh = getattr(account, "refresh_token_file", None)
    if app_only:
        public_client_fix = (
            f"put the client secret's Value into {account.client_secret_file or 'client_secret_file'} "
            "(the request went without a secret: the file is empty?)")
    else:
        public_client_fix = (
            f"in Entra ID > App registrations > {account.client_id or '?'} > "
            "Authentication > Advanced settings, set \"Allow public client flows\" to "
            "Yes and Save; `xrelay login` fails the same way until then")
    return {
        "name": account.name,
        "user": account.user,
        "cloud": getattr(account, "cloud", "global"),
        "public_client_fix": public_client_fix,
        "client_id": account.client_id or "?",
        "tenant": account.tenant or "?",
        "client_secret_file": account.client_secret_file or "client_secret_file",
        "certificate_file": account.certificate_file or "the certificate",
        "permission": permission,
        "who": "the app " + (account.client_id or "") if app_only else account.user,
        "refresh_file": f", or put a new refresh token in {refresh}" if refresh else "",
    }


def explain(reason: str, account: Any,
            codes: Iterable[int] = ()) -> tuple[TokenState, str, str | None]:
    """
    The account's state, the fix, and the meaning (or C{None} when no row matches) for
    a refusal whose text is C{reason} (C{"invalid_client: AADSTS7000215: ..."}).

    A refusal no row explains is C{needs sign-in} for delegated flows (a person signing
    in again is what helps), and C{credentials refused} for app-only ones, where there
    is nobody to sign in.
    """
    for code in list(codes) + aadsts_codes(reason):
        row = _BY_CODE.get(code)
        if row is not None:
            state = row.state
            if state is S.NEEDS_SIGN_IN and account.flow == "client_credentials":
                state = S.CREDENTIALS_REFUSED
            fix = row.fix.format(**_fields(account))
            if state is S.CREDENTIALS_REFUSED:
                fix = _app_only_fix(account)
            return state, fix, row.meaning
    if account.flow == "client_credentials":
        return S.CREDENTIALS_REFUSED, _app_only_fix(account), None
    return S.NEEDS_SIGN_IN, _delegated_fix(account), None


def _app_only_fix(account: Any) -> str:
    what = (f"the client secret in {account.client_secret_file}"
            if account.client_secret_file else f"the certificate in {account.certificate_file}")
    return (f"check the app registration {account.client_id} and {what} (it may have "
            "expired); xrelay reads the files again by itself (or run `xrelay reload`)")


def _delegated_fix(account: Any) -> str:
    refresh = getattr(account, "refresh_token_file", None)
    if account.flow == "refresh_token" and refresh:
        return (f"run `xrelay login {account.name}` (or use Sign in on the admin page), "
                f"or put a new refresh token in {refresh}")
    return f"run `xrelay login {account.name}` or use Sign in on the admin page"
