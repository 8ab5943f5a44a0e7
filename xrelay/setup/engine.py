"""
The setup engine: one admin sign-in in, one delivering account out.  Both faces (C{xrelay
setup microsoft} in the terminal, the "Add an account" wizard on the admin page) drive
this same object; they differ only in how they show its lines and how the admin signs in
(L{xrelay.setup.signin}).

The steps, in order (L{SetupEngine.run}), each saying what it does before it does it:
the mailbox is looked up (a mailbox that does not exist stops everything before anything
is created); the app registration is found by its tags (made by xrelay, for this relay,
for this account) or created; its service principal; the method's permissions with admin
consent; a credential (a certificate made here by default); the account written as a
managed drop-in (validated, atomic, reloaded: L{xrelay.managed}); then the engine waits
until Entra ID hands the new app a token (replication takes seconds to minutes), and for
SMTP app-only until Exchange Online accepts it: through Exchange's admin API when the
admin holds an Exchange role, else after printing the PowerShell block to paste.

The admin's tokens are only in memory (L{xrelay.setup.signin.AdminSession}) and are
dropped at the end, whatever happens.  Blocking: the page runs it in a thread.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from typing import Any, Callable

import attrs

from xrelay.config import Config
from xrelay.setup.credential import make_certificate, write_secret
from xrelay.setup.exchangeapi import (ExchangeAdminClient, ExchangeRefused,
                                      exchange_powershell, rbac_powershell)
from xrelay.setup.graphapi import GraphAdminClient, GraphRefused
from xrelay.setup.plan import EXCHANGE_APP_ID, GRAPH_APP_ID, Plan, SetupRefused
from xrelay.setup.signin import AdminSession

__all__ = ["SetupEngine", "SetupResult", "relay_id"]

#: Tags on everything xrelay creates (Graph application.tags), so that a second run
#: finds and reuses it instead of making another.
TAG = "xrelay"


@attrs.frozen
class SetupResult:
    account: str
    app_id: str
    tenant_id: str
    #: The delegated method: the mailbox's user must still sign in once.
    needs_user_sign_in: bool
    reloaded: bool | None


def relay_id(state_dir: str) -> str:
    """This relay's stable id (created once in state_dir/managed): tags its apps."""
    from xrelay.durable import write_durably
    from xrelay.managed import managed_dir

    path = os.path.join(managed_dir(state_dir), "relay-id")
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except FileNotFoundError:
        pass
    os.makedirs(managed_dir(state_dir), mode=0o700, exist_ok=True)
    value = uuid.uuid4().hex[:12]
    try:
        write_durably(path, value.encode("ascii"), exclusive=True)
    except FileExistsError:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    return value


@attrs.define
class SetupEngine:
    """
    @param config: the relay's configuration now (its state_dir, hostname, admin page).
    @param say: shows one line to the admin (the terminal prints it; the page lists it).
    @param reload: makes the daemon take the new drop-in (L{xrelay.managed}).
    @param current_config: the configuration after the drop-in (for the checks).
    @param callback_uri: the admin page's sign-in redirect URI, registered on a delegated
        app so that its user can sign in from the status page; None: device code.
    """

    config: Config
    plan: Plan
    say: Callable[[str], None]
    bundle: str
    current_config: Callable[[], Config]
    reload: Callable[[], bool | None] | None = None
    callback_uri: str | None = None
    actor: str = "xrelay setup"
    poll_interval: float = 10.0
    wait_timeout: float = 45 * 60.0
    sleep: Callable[[float], None] = time.sleep
    #: Set by the page when the admin gives up waiting.
    cancelled: Callable[[], bool] = lambda: False
    #: Shown when Exchange's part must be done by hand (the face may show it apart).
    powershell: str | None = None

    def run(self, admin: AdminSession) -> SetupResult:
        try:
            return self._run(admin)
        except GraphRefused as e:
            raise SetupRefused(e.text) from None
        finally:
            admin.forget()

    def _run(self, admin: AdminSession) -> SetupResult:
        request, plan = self.plan.request, self.plan
        graph = GraphAdminClient(self.config.setup.graph_url, _session(self.bundle),
                                 admin.graph_token)
        self.say(f"Signed in as {admin.upn} (tenant {admin.tenant_id}).")
        user = graph.user(request.mailbox)
        if user is None:
            raise SetupRefused(
                f"the mailbox {request.mailbox} does not exist in tenant "
                f"{admin.tenant_id}; check the address (Microsoft 365 admin center > "
                "Users > Active users) or create the mailbox first; nothing was created")
        resources = self._resources(graph)
        tags = [TAG, f"xrelay-relay-{relay_id(self.config.server.state_dir)}",
                f"xrelay-account-{request.account_name}"]
        app = self._application(graph, tags, resources)
        sp = graph.service_principal_of(app["appId"], "look up the app's service "
                                        "principal")
        if sp is None:
            self.say("Creating its service principal (enterprise application).")
            sp = graph.create_service_principal(app["appId"], tags)
        else:
            self.say("Its service principal exists; reusing it.")
        self._consent(graph, sp, resources, user)
        table = self._credential(graph, app, admin)
        from xrelay import managed

        change = managed.write_account(self.config, table, actor=f"{self.actor} "
                                       f"({admin.upn})", reload=self.reload)
        self.say(f"Wrote {change.path} (managed; your own file is untouched); "
                 + {True: "the relay reloaded it.", False: "the relay did NOT reload "
                    "it: see its log.", None: "the relay is not running: start it "
                    "to use the account."}[change.reloaded])
        if request.method == "graph":
            self.say("Optional, least privilege: Entra's Mail.Send is for every mailbox; "
                     "to limit it to this one, an Exchange admin runs:\n"
                     + rbac_powershell(admin.tenant_id, app["appId"], request.mailbox,
                                       request.account_name))
        if request.app_only:
            self._wait_for_token(table["name"])
        else:
            self._wait("Entra ID knows the new app (a new app takes seconds to minutes "
                       "to replicate; before that its sign-in answers AADSTS700016)",
                       lambda: self._app_known(table["name"]))
        if plan.exchange_steps:
            self._exchange(admin, app, sp, table["name"])
        return SetupResult(table["name"], app["appId"], admin.tenant_id,
                           needs_user_sign_in=not request.app_only,
                           reloaded=change.reloaded)

    # -- Entra ---------------------------------------------------------------------------

    def _resources(self, graph: GraphAdminClient) -> dict[str, dict[str, Any]]:
        found = {}
        for app_id in {p.resource_app_id for p in self.plan.permissions}:
            sp = graph.service_principal_of(app_id, "look up Microsoft's API")
            if sp is None:
                raise SetupRefused(f"the tenant has no service principal for {app_id} "
                                   "(Microsoft Graph / Exchange Online); the tenant needs "
                                   "an Exchange Online licence")
            found[app_id] = sp
        return found

    def _permission_id(self, resource: dict[str, Any], value: str, kind: str) -> str:
        items = resource.get("appRoles" if kind == "Role" else "oauth2PermissionScopes")
        for item in items or ():
            if item.get("value") == value:
                return str(item["id"])
        raise SetupRefused(f"{resource.get('displayName')} offers no permission {value} "
                           f"in this tenant; report this to xrelay")

    def _application(self, graph: GraphAdminClient, tags: list[str],
                     resources: dict[str, dict[str, Any]]) -> dict[str, Any]:
        existing = graph.applications_tagged(*tags)
        if existing:
            self.say(f"Reusing the app registration {existing[0]['displayName']!r} "
                     f"(client id {existing[0]['appId']}) that xrelay made before.")
            return existing[0]
        access: dict[str, list[dict[str, str]]] = {}
        for p in self.plan.permissions:
            access.setdefault(p.resource_app_id, []).append({
                "id": self._permission_id(resources[p.resource_app_id], p.value, p.type),
                "type": p.type})
        body: dict[str, Any] = {
            "displayName": self.plan.display_name, "signInAudience": "AzureADMyOrg",
            "tags": tags, "notes": "Made by xrelay's setup for one relay; its private "
            "key stays on the relay host. Remove it with the account.",
            "requiredResourceAccess": [{"resourceAppId": k, "resourceAccess": v}
                                       for k, v in access.items()]}
        if not self.plan.request.app_only:
            if self.callback_uri:
                body["web"] = {"redirectUris": [self.callback_uri]}
            else:
                body["isFallbackPublicClient"] = True  # device code: a public client
        self.say(f"Creating the app registration {self.plan.display_name!r}.")
        app = graph.create_application(body)
        self.say(f"Created: client id {app['appId']}.")
        return app

    def _consent(self, graph: GraphAdminClient, sp: dict[str, Any],
                 resources: dict[str, dict[str, Any]], user: dict[str, Any]) -> None:
        roles = [p for p in self.plan.permissions if p.type == "Role"]
        if roles:
            held = {(a.get("resourceId"), a.get("appRoleId"))
                    for a in graph.app_role_assignments(sp["id"])}
            for p in roles:
                resource = resources[p.resource_app_id]
                role_id = self._permission_id(resource, p.value, "Role")
                if (resource["id"], role_id) in held:
                    self.say(f"Consent to {p.text()}: already granted.")
                    continue
                self.say(f"Granting admin consent to {p.text()}.")
                graph.assign_app_role(sp["id"], resource["id"], role_id, p.value)
        scopes: dict[str, list[str]] = {}
        for p in self.plan.permissions:
            if p.type == "Scope":
                scopes.setdefault(p.resource_app_id, []).append(p.value)
        if scopes:
            granted = {(g.get("resourceId"), g.get("principalId"))
                       for g in graph.permission_grants(sp["id"])}
            for app_id, values in scopes.items():
                resource = resources[app_id]
                if (resource["id"], user["id"]) in granted:
                    self.say(f"Consent to {' '.join(values)} for {user.get('userPrincipalName')}: "
                             "already granted.")
                    continue
                self.say(f"Granting consent to {resource.get('displayName')}: "
                         f"{' '.join(values)} (delegated) for "
                         f"{user.get('userPrincipalName')} only.")
                graph.grant_delegated(sp["id"], resource["id"], " ".join(values), user["id"])

    def _credential(self, graph: GraphAdminClient, app: dict[str, Any],
                    admin: AdminSession) -> dict[str, Any]:
        from xrelay.managed import credentials_dir

        request = self.plan.request
        name = request.account_name
        folder = credentials_dir(self.config.server.state_dir)
        table = self._account_table(app, admin)
        if not request.app_only and not self.callback_uri:
            self.say("No credential: the account signs in with a device code as its "
                     "mailbox's user (a public client).")
            return table
        if request.credential == "secret":
            self.say("Adding a client secret (you asked for one instead of a "
                     "certificate).")
            secret = graph.add_password(app["id"], f"xrelay {name}")
            table["client_secret_file"] = write_secret(folder, name, secret)
            return table
        certificate = make_certificate(folder, name, self.config.server.hostname)
        self.say(f"Made a certificate on this host ({certificate.certificate_file}; its "
                 "private key, mode 0600, never leaves it); uploading the public part.")
        keep = [{"keyId": k["keyId"]} for k in app.get("keyCredentials") or ()]
        import base64

        graph.update_application(app["id"], {"keyCredentials": [*keep, {
            "type": "AsymmetricX509Cert", "usage": "Verify",
            "displayName": f"xrelay {name} {time.strftime('%Y-%m-%d')}",
            "key": base64.b64encode(certificate.der).decode("ascii")}]})
        table["certificate_file"] = certificate.certificate_file
        table["certificate_key_file"] = certificate.key_file
        return table

    def _account_table(self, app: dict[str, Any], admin: AdminSession) -> dict[str, Any]:
        request, setup = self.plan.request, self.config.setup
        table: dict[str, Any] = {
            "name": request.account_name, "provider": "microsoft", "user": request.mailbox,
            "tenant": admin.tenant_id, "client_id": app["appId"],
            "senders": list(request.senders) or [request.mailbox]}
        if request.method == "delegated":
            table["flow"] = "auth_code" if self.callback_uri else "device_code"
        else:
            table["flow"] = "client_credentials"
            table["transport"] = "graph" if request.method == "graph" else "smtp"
        if request.method == "graph" and request.large_messages:
            # The app was granted Mail.ReadWrite for this: without the key the account
            # would still refuse what one sendMail request cannot carry (over 3 MB).
            table["graph_large_messages"] = "upload_session"
        if setup.cloud != "global":
            table["cloud"] = setup.cloud
        cloud = self.plan.cloud
        if setup.authority != cloud.authority:
            table["authority"] = setup.authority
        if setup.graph_url != cloud.graph_url and request.method == "graph":
            table["graph_url"] = setup.graph_url
        if setup.ca_file:
            table["ca_file"] = setup.ca_file
        return table

    # -- waiting ----------------------------------------------------------------------

    def _wait(self, what: str, done: Callable[[], str | None]) -> None:
        """Poll C{done} (None: not yet; else why not) until it passes or time runs out."""
        self.say(f"Waiting until {what} (polling every {self.poll_interval:g}s, for up to "
                 f"{self.wait_timeout / 60:g} minutes).")
        deadline = time.monotonic() + self.wait_timeout
        last = None
        while True:
            if self.cancelled():
                raise SetupRefused(f"stopped waiting until {what}; the account is "
                                   "written, so `xrelay doctor` shows when it works")
            problem = done()
            if problem is None:
                return
            if problem != last:
                self.say(f"  not yet: {problem}")
                last = problem
            if time.monotonic() > deadline:
                raise SetupRefused(f"gave up waiting until {what} ({problem}); the account "
                                   "is written: run `xrelay doctor` later")
            self.sleep(self.poll_interval)

    def _doctor_problem(self, account_name: str, step: str) -> str | None:
        """None once doctor's step C{step} passes, else the first failure's detail."""
        from xrelay.operations.doctor import Doctor

        config = self.current_config()
        try:
            account = config.account(account_name)
        except KeyError:
            return "the relay does not show the account yet"
        first_failure = None
        # walk() yields each step as it finishes: stop at ours (the later steps would
        # send a message).
        for found in Doctor(config, account).walk():
            if found.ok is False and first_failure is None:
                first_failure = found.detail
            if found.name.startswith(step):
                return None if found.ok is True else (first_failure or found.detail)
        return first_failure or "the checks did not run"

    def _app_known(self, account_name: str) -> str | None:
        """None once the identity platform knows the (delegated) app, else why not."""
        import msal

        from xrelay.tokens.microsoft import build_application, describe

        try:
            account = self.current_config().account(account_name)
        except KeyError:
            return "the relay does not show the account yet"
        public = not (account.certificate_file or account.client_secret_file)
        app = build_application(account, self.bundle, msal.SerializableTokenCache(),
                                public=public)
        if isinstance(app, msal.ConfidentialClientApplication):
            # A token for no permission at all: the app exists and its key works.
            result = app.acquire_token_for_client(
                [f"{self.plan.cloud.graph_resource}/.default"])
            return None if "access_token" in result else describe(result)
        assert isinstance(app, msal.PublicClientApplication)
        flow = app.initiate_device_flow(scopes=[f"{self.plan.cloud.outlook_delegated_resource}/SMTP.Send"])
        return None if "user_code" in flow else describe(flow)

    def _wait_for_token(self, account_name: str) -> None:
        self._wait("Entra ID gives the new app a token (a new app takes seconds to "
                   "minutes to replicate)",
                   lambda: self._doctor_problem(account_name, "token request"))

    def _exchange(self, admin: AdminSession, app: dict[str, Any], sp: dict[str, Any],
                  account_name: str) -> None:
        request = self.plan.request
        token = admin.exchange_token()
        done_here = False
        if token is not None:
            client = ExchangeAdminClient(self.config.setup.exchange_admin_url,
                                         admin.tenant_id, _session(self.bundle), token)
            try:
                self.say(f"Registering the app in Exchange Online and giving it FullAccess "
                         f"on {request.mailbox} (Exchange's admin API).")
                client.register(app["appId"], sp["id"], self.plan.display_name,
                                request.mailbox)
                done_here = True
            except ExchangeRefused as e:
                if not e.not_allowed:
                    raise SetupRefused(f"{e.text}; fix it and run the setup again (it "
                                       "reuses what exists)") from None
                self.say(f"{admin.upn} may not run Exchange cmdlets ({e.text}).")
        if not done_here:
            self.powershell = exchange_powershell(admin.tenant_id, app["appId"], sp["id"],
                                                  self.plan.display_name, request.mailbox)
            self.say("An Exchange administrator must run these lines in PowerShell "
                     "(values filled in); xrelay waits until Exchange accepts the app:\n"
                     + self.powershell)
        self._wait(f"Exchange Online accepts the app for SMTP AUTH as {request.mailbox} "
                   "(after New-ServicePrincipal and Add-MailboxPermission; Exchange can "
                   "take many minutes)",
                   lambda: self._doctor_problem(account_name, "XOAUTH2 login"))
        self.say("Exchange Online accepts the app.")


def _session(bundle: str) -> Any:
    from xrelay.tokens.trust import TrustedSession

    return TrustedSession(bundle)


def fingerprint(text: str) -> str:
    """A short digest to name something without showing it."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


__all__ += ["GRAPH_APP_ID", "EXCHANGE_APP_ID"]
