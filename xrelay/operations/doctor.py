"""
C{xrelay doctor ACCOUNT}: walk the whole chain one account's mail takes and say, step by
step, what works and, for what does not, the gate that is closed and the line that opens
it; C{xrelay doctor --script ACCOUNT}: the PowerShell script (ExchangeOnlineManagement)
that sets up the tenant for this account.

The steps, in order, each depending on the ones before: the configuration; the
authority and the upstream host (DNS, TCP, TLS and its certificate); the token request
(AADSTS code -> meaning -> fix, L{xrelay.tokens.aadsts}); the XOAUTH2 login (535 5.7.3 /
5.7.139 -> which gate -> the PowerShell line); a test message to the account's own
mailbox; and for each exact sender address in the account's C{senders}, whether Send As
is granted (with C{--send-as-check}: one test message per sender, to the account's own
mailbox).

It runs in the command's process, blocking, with the standard library's sockets, ssl and
smtplib and with msal: no reactor, so that it also works when the daemon does not.  It
never prints a token or a secret (the XOAUTH2 line is never echoed) and writes only what
the daemon would: the account's token cache, under its lock.
"""

from __future__ import annotations

import base64
import email.utils
import functools
import os
import smtplib
import socket
import ssl
import time
from typing import Any, Callable
from urllib.parse import urlsplit

import attrs

__all__ = ["Step", "Doctor", "powershell_script"]

#: Exchange Online's PowerShell lines for each closed gate.  Sources:
#: https://learn.microsoft.com/en-us/exchange/clients-and-mobile-in-exchange-online/authenticated-client-smtp-submission
#: (Set-CASMailbox / Set-TransportConfig -SmtpClientAuthenticationDisabled),
#: https://learn.microsoft.com/en-us/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth
#: (New-ServicePrincipal, Add-MailboxPermission -AccessRights FullAccess),
#: https://learn.microsoft.com/en-us/powershell/module/exchange/add-recipientpermission
#: (Add-RecipientPermission -AccessRights SendAs).
SMTP_AUTH_MAILBOX = 'Set-CASMailbox -Identity "{user}" -SmtpClientAuthenticationDisabled $false'
SMTP_AUTH_TENANT = "Set-TransportConfig -SmtpClientAuthenticationDisabled $false"
SERVICE_PRINCIPAL = ('New-ServicePrincipal -AppId "{client_id}" -ObjectId $ObjectId '
                     '-DisplayName "xrelay {name}"')
MAILBOX_PERMISSION = ('Add-MailboxPermission -Identity "{user}" -User $ObjectId '
                      '-AccessRights FullAccess')
SEND_AS = ('Add-RecipientPermission -Identity "{sender}" -Trustee "{user}" '
           '-AccessRights SendAs -Confirm:$false')
#: Where $ObjectId comes from: the Enterprise application's Object ID (not the App
#: registration's), looked up with Microsoft Graph PowerShell.
OBJECT_ID = ('$ObjectId = (Get-MgServicePrincipal -Filter "appId eq \'{client_id}\'").Id')


@attrs.frozen
class Step:
    """
    One step's outcome.

    @ivar ok: C{True} ok, C{False} failed, C{None} skipped (or not checked).
    @ivar fix: what to do, for a failed (or unchecked) step.
    """

    name: str
    ok: bool | None
    detail: str
    fix: str | None = None

    def lines(self) -> list[str]:
        mark = {True: "ok", False: "FAILED", None: "skipped"}[self.ok]
        lines = [f"{mark:<8}{self.name}: {self.detail}"]
        if self.fix:
            first, *rest = self.fix.splitlines()
            lines += [f"{'':8}fix: {first}"] + [f"{'':13}{line}" for line in rest]
        return lines


class _Skipped(Exception):
    """A step this doctor cannot take for this account (not a failure)."""


class _Failed(Exception):
    def __init__(self, detail: str, fix: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fix = fix


def _fields(account: Any) -> dict[str, str]:
    return {"user": account.user, "client_id": account.client_id or "",
            "name": account.name, "tenant": account.tenant or ""}


def _host_port(url: str, default: int = 443) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or default


@attrs.define
class Doctor:
    """
    Diagnoses one account.  L{run} yields the steps as they finish (so the command can
    print each at once); L{steps} keeps them.
    """

    config: Any
    account: Any
    send_as_check: bool = False
    timeout: float = 20.0
    steps: list[Step] = attrs.field(factory=list)
    _token: str | None = attrs.field(default=None, repr=False)
    _context: ssl.SSLContext | None = attrs.field(default=None, repr=False)

    # -- helpers ---------------------------------------------------------------

    def tls_context(self) -> ssl.SSLContext:
        if self._context is None:
            import certifi

            context = ssl.create_default_context(cafile=certifi.where())
            if self.account.ca_file:
                context.load_verify_locations(self.account.ca_file)
            self._context = context
        return self._context

    def _step(self, name: str, check: Callable[[], str],
              needs: bool = True) -> Step:
        if not needs:
            step = Step(name, None, "not tried: an earlier step failed")
        else:
            try:
                step = Step(name, True, check())
            except _Failed as e:
                step = Step(name, False, e.detail, e.fix)
            except _Skipped as e:
                step = Step(name, None, str(e))
        self.steps.append(step)
        return step

    # -- the walk --------------------------------------------------------------

    def run(self) -> "list[Step]":
        """Every step, in order (also in L{steps})."""
        for _ in self.walk():
            pass
        return self.steps

    def walk(self) -> Any:
        a = self.account
        config_ok = self._step("configuration", self.check_configuration).ok
        yield self.steps[-1]
        if a.provider == "microsoft":
            authority = self._step(
                f"authority {a.authority}", lambda: self.check_https(a.authority),
                bool(config_ok)).ok
        else:
            token_url = a.authority
            authority = self._step(f"token endpoint {token_url}",
                                   lambda: self.check_https(token_url), bool(config_ok)).ok
        yield self.steps[-1]
        if a.transport == "graph":
            upstream = self._step(f"Graph {a.graph_url}",
                                  lambda: self.check_https(a.graph_url), bool(config_ok)).ok
        else:
            upstream = self._step(f"upstream {a.smtp_host}:{a.smtp_port}",
                                  self.check_smtp_host, bool(config_ok)).ok
        yield self.steps[-1]
        token = self._step("token request", self.check_token, bool(authority)).ok
        yield self.steps[-1]
        if a.transport == "graph":
            self.steps.append(Step("XOAUTH2 login", None, "not used (transport = graph); "
                                   "`xrelay send-test` checks Graph sendMail"))
            yield self.steps[-1]
            return
        login = self._step(f"XOAUTH2 login as {a.user}", self.check_login,
                           bool(token and upstream)).ok
        yield self.steps[-1]
        self._step(f"test message to {a.user}", lambda: self.send_test(a.user),
                   bool(login))
        yield self.steps[-1]
        for sender in self.exact_senders():
            name = f"Send As {sender}"
            fix = SEND_AS.format(sender=sender, **_fields(a))
            if not self.send_as_check:
                self.steps.append(Step(name, None, "not checked (run with "
                                       "--send-as-check to send one test message as "
                                       f"<{sender}> to {a.user})", fix))
            else:
                self._step(name, functools.partial(self.send_test, sender), bool(login))
            yield self.steps[-1]

    def exact_senders(self) -> list[str]:
        """The account's sender patterns that are one address, other than its own."""
        return [p.text for p in self.account.senders
                if "*" not in p.text and "?" not in p.text and "[" not in p.text
                and p.text.lower() != self.account.user.lower() and p.text != "<>"]

    # -- steps -----------------------------------------------------------------

    def check_configuration(self) -> str:
        from xrelay.tokens.expiry import credential_expiries, expiry_warnings

        a = self.account
        for path in (a.client_secret_file, a.certificate_file, a.certificate_key_file,
                     a.refresh_token_file, a.ca_file):
            if path and not os.access(path, os.R_OK):
                raise _Failed(f"{path} is not readable by this user",
                              f"chmod/chown {path} so the relay's user can read it")
        if a.client_secret_file:
            with open(a.client_secret_file, encoding="utf-8", errors="replace") as f:
                if not f.read().strip():
                    raise _Failed(f"{a.client_secret_file} is empty",
                                  f"put the client secret's Value in {a.client_secret_file}")
        now = time.time()
        mine = [e for e in credential_expiries(self.config)
                if e.scope == "account" and e.owner == a.name]
        expired = [e for e in mine if e.expires_at <= now]
        if expired:
            raise _Failed(expired[0].describe(now).split(": ", 1)[1])
        soon = expiry_warnings(mine, now)
        what = f"{a.provider}, {a.flow}, {a.transport}, mailbox {a.user}"
        return what + (f"; warning: {soon[0].split(': ', 1)[1]}" if soon else "")

    def check_https(self, url: str) -> str:
        host, port = _host_port(url)
        return self._reach(host, port, tls_from_start=True)

    def check_smtp_host(self) -> str:
        a = self.account
        return self._reach(a.smtp_host, a.smtp_port, tls_from_start=a.smtp_implicit_tls,
                           smtp=True)

    def _reach(self, host: str, port: int, tls_from_start: bool, smtp: bool = False) -> str:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise _Failed(f"DNS: {host} does not resolve ({e.strerror})",
                          "check the host name and this machine's DNS resolver") from None
        address = infos[0][4][0]
        try:
            sock = socket.create_connection((host, port), timeout=self.timeout)
        except OSError as e:
            raise _Failed(f"DNS {address}; TCP to port {port}: "
                          f"{e.strerror or type(e).__name__}",
                          f"allow outgoing TCP to {host}:{port} in the firewall / proxy") from None
        try:
            if smtp and not tls_from_start:
                banner = _read_reply(sock)
                if not banner.startswith("220"):
                    raise _Failed(f"TCP ok; the server greets with {banner!r}")
                sock.sendall(b"EHLO xrelay-doctor\r\n")
                _read_reply(sock)
                sock.sendall(b"STARTTLS\r\n")
                reply = _read_reply(sock)
                if not reply.startswith("220"):
                    raise _Failed(f"TCP ok; STARTTLS refused: {reply}")
            try:
                tls = self.tls_context().wrap_socket(sock, server_hostname=host)
            except ssl.SSLCertVerificationError as e:
                raise _Failed(f"DNS {address}; TCP ok; TLS certificate not trusted: "
                              f"{e.verify_message}",
                              "if a proxy inspects TLS, put its CA in ca_file; otherwise "
                              "check the host name") from None
            except (ssl.SSLError, OSError) as e:
                raise _Failed(f"DNS {address}; TCP ok; TLS handshake failed: {e}") from None
            with tls:
                cert = tls.getpeercert() or {}
                until = cert.get("notAfter", "?")
                return (f"DNS {address}, TCP ok, {tls.version()}, certificate for {host} "
                        f"valid until {until}")
        finally:
            sock.close()

    def check_token(self) -> str:
        a = self.account
        if a.provider != "microsoft":
            raise _Skipped("doctor asks Microsoft's identity platform only; for Google "
                           "accounts run `xrelay send-test --account " + a.name + "`")
        from xrelay.tokens import aadsts
        from xrelay.tokens.cache import AccountCache, load_key
        from xrelay.tokens.errors import GrantRefused, GrantUnavailable
        from xrelay.tokens.microsoft import MicrosoftGrant, scopes_for
        from xrelay.tokens.trust import trust_bundle

        state_dir = self.config.server.state_dir
        cache = AccountCache.open(state_dir, a.name, load_key(state_dir))
        grant = MicrosoftGrant(a, cache, trust_bundle(state_dir, a.ca_file),
                               run=lambda f, *args: f(*args))
        try:
            result = grant.fetch_here(a.flow == "client_credentials")
        except GrantRefused as e:
            state, fix, meaning = aadsts.explain(e.reason, a)
            because = f" ({meaning})" if meaning else ""
            raise _Failed(f"{state.value}{because}: {e.reason}", fix) from None
        except GrantUnavailable as e:
            raise _Failed(f"the identity platform did not answer: {e.reason}",
                          "try again; if it persists, check the authority URL and the "
                          "network path to it") from None
        self._token = result.access_token
        return (f"access token for {' '.join(scopes_for(a))}, valid "
                f"{int(result.expires_in)} s")

    def _smtp(self) -> smtplib.SMTP:
        a = self.account
        if a.smtp_implicit_tls:
            client: smtplib.SMTP = smtplib.SMTP_SSL(a.smtp_host, a.smtp_port,
                                                    timeout=self.timeout,
                                                    context=self.tls_context())
        else:
            client = smtplib.SMTP(a.smtp_host, a.smtp_port, timeout=self.timeout)
            client.ehlo("xrelay-doctor")
            client.starttls(context=self.tls_context())
        client.ehlo("xrelay-doctor")
        return client

    def _login(self, client: smtplib.SMTP) -> str:
        assert self._token is not None
        a = self.account
        payload = base64.b64encode(f"user={a.user}\x01auth=Bearer {self._token}\x01\x01"
                                   .encode()).decode()
        code, text = client.docmd("AUTH", "XOAUTH2 " + payload)
        reply = f"{code} {text.decode('utf-8', 'replace')}"
        if code == 334:  # a challenge (Gmail): end the exchange to get the final reply
            code, text = client.docmd("")
            reply = f"{code} {text.decode('utf-8', 'replace')}"
        if code != 235:
            raise _Failed(*self.closed_gate(reply))
        return reply

    def closed_gate(self, reply: str) -> tuple[str, str]:
        """Which of Exchange Online's gates a refused XOAUTH2 login names, and the fix."""
        a = self.account
        f = _fields(a)
        one_line = " ".join(reply.split())
        if "5.7.139" in reply and "Tenant" in reply:
            return (f"SMTP AUTH is disabled for the whole tenant: {one_line}",
                    f"{SMTP_AUTH_TENANT}\n(or leave it off for the tenant and allow the "
                    f"relay's mailbox alone: {SMTP_AUTH_MAILBOX.format(**f)})")
        if "5.7.139" in reply:
            return (f"SMTP AUTH is disabled for the mailbox {a.user}: {one_line}",
                    SMTP_AUTH_MAILBOX.format(**f))
        if a.flow == "client_credentials":
            return (f"Exchange refused the app's token for {a.user}: the app's service "
                    "principal is not registered in Exchange Online or has no "
                    f"FullAccess on the mailbox (or SMTP.SendAsApp lacks admin consent): "
                    f"{one_line}",
                    f"{OBJECT_ID.format(**f)}\n{SERVICE_PRINCIPAL.format(**f)}\n"
                    f"{MAILBOX_PERMISSION.format(**f)}\n(`xrelay doctor --script {a.name}` "
                    "prints the whole script)")
        return (f"Exchange refused the token for {a.user}: it was issued to another user, "
                f"lacks SMTP.Send, or SMTP AUTH is off for the mailbox: {one_line}",
                f"sign in as {a.user} (`xrelay login {a.name}`), check the SMTP.Send "
                f"permission of app {a.client_id}, and {SMTP_AUTH_MAILBOX.format(**f)}")

    def check_login(self) -> str:
        try:
            with self._smtp() as client:
                return self._login(client)
        except (OSError, smtplib.SMTPException) as e:
            raise _Failed(f"the SMTP session failed: {e}") from None

    def send_test(self, sender: str) -> str:
        """One message from C{sender} to the account's own mailbox."""
        a = self.account
        message = (f"From: <{sender}>\r\nTo: <{a.user}>\r\n"
                   f"Subject: xrelay doctor test for account {a.name} as {sender}\r\n"
                   f"Date: {email.utils.formatdate()}\r\n"
                   f"Message-ID: {email.utils.make_msgid('xrelay-doctor')}\r\n\r\n"
                   "A test message from `xrelay doctor`; it may be deleted.\r\n")
        try:
            with self._smtp() as client:
                self._login(client)
                code, text = client.mail(sender)
                if code != 250:
                    raise _Failed(f"MAIL FROM refused: {code} {text.decode()}")
                code, text = client.rcpt(a.user)
                if code not in (250, 251):
                    raise _Failed(f"RCPT TO refused: {code} {text.decode()}")
                code, text = client.data(message.encode())
                reply = f"{code} {' '.join(text.decode('utf-8', 'replace').split())}"
        except _Failed:
            raise
        except smtplib.SMTPDataError as e:
            said = e.smtp_error  # bytes from the server; typeshed allows str too
            said = said.decode("utf-8", "replace") if isinstance(said, bytes) else said
            reply = f"{e.smtp_code} {' '.join(said.split())}"
            code = e.smtp_code
        except (OSError, smtplib.SMTPException) as e:
            raise _Failed(f"the SMTP session failed: {e}") from None
        if code == 250:
            return reply
        if "5.2.252" in reply or "SendAsDenied" in reply:
            raise _Failed(f"{a.user} may not send as {sender}: {reply}",
                          SEND_AS.format(sender=sender, **_fields(a)))
        raise _Failed(f"refused: {reply}")


def _read_reply(sock: socket.socket) -> str:
    """One (possibly multi-line) SMTP reply, as text."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
        lines = data.split(b"\r\n")
        complete = [line for line in lines[:-1]]
        if complete and len(complete[-1]) >= 4 and complete[-1][3:4] == b" ":
            break
    return data.decode("utf-8", "replace").strip()


def powershell_script(account: Any) -> str:
    """
    The Exchange Online setup for C{account}, values filled in: SMTP AUTH for the
    mailbox, the app's service principal and mailbox permission (app-only), Send As for
    each exact sender.  Run in PowerShell 7 as an Exchange administrator.
    """
    f = _fields(account)
    app_only = account.flow == "client_credentials"
    lines = [
        f"# xrelay: Exchange Online setup for account {account.name} "
        f"(mailbox {account.user}, app {account.client_id}, tenant {account.tenant})",
        "# Run in PowerShell 7 as an Exchange administrator.",
        "# Modules, once: Install-Module ExchangeOnlineManagement, Microsoft.Graph.Applications "
        "-Scope CurrentUser",
        "Import-Module ExchangeOnlineManagement",
        f'Connect-ExchangeOnline -Organization "{account.tenant}"',
        "",
        "# 1. The app registration's API permission, with admin consent (Entra ID > App "
        f"registrations > {account.client_id} > API permissions):",
        "#    " + ("Office 365 Exchange Online > SMTP.SendAsApp (Application)" if app_only
                   else "Microsoft Graph > SMTP.Send (Delegated)")
        + ", then \"Grant admin consent\".",
        "",
        "# 2. SMTP AUTH for the relay's mailbox (off by default in new tenants):",
        SMTP_AUTH_MAILBOX.format(**f),
        f"# (only if the whole tenant must allow it: {SMTP_AUTH_TENANT})",
    ]
    if app_only:
        lines += [
            "",
            "# 3. The app's service principal in Exchange Online, with FullAccess on the "
            "mailbox.",
            "#    Its Object ID is the Enterprise application's (not the App registration's).",
            f'Connect-MgGraph -TenantId "{account.tenant}" -Scopes "Application.Read.All" '
            "-NoWelcome",
            OBJECT_ID.format(**f),
            SERVICE_PRINCIPAL.format(**f),
            MAILBOX_PERMISSION.format(**f),
        ]
    senders = Doctor(None, account).exact_senders()
    if senders:
        lines += ["", f"# {4 if app_only else 3}. Send As for each sender address the "
                  "relay sends as:"]
        lines += [SEND_AS.format(sender=s, **f) for s in senders]
    lines += ["", f"# Then check: xrelay doctor --send-as-check {account.name}", ""]
    return "\n".join(lines)
