"""
The admin page's "Add an account" wizard at C{/setup}: the page face of the setup engine
(L{xrelay.setup.engine.SetupEngine}), the same steps as C{xrelay setup microsoft}.

1. The form: the mailbox, the method (SMTP as an app, Graph as an app, SMTP as the
   mailbox's user), optional name and senders, certificate or client secret.
2. The plan, shown before anything is asked: what will be created, which permissions.
3. The admin's sign-in: the authorization code flow with PKCE and the redirect
   C{http://localhost:PORT/} when this page is served on loopback (the setup's public
   client accepts any localhost port); otherwise the device code with its link.  The
   identity platform returns to C{/?code=...&state=...}: that return is authorised by
   the single-use C{state} (a cross-site navigation carries no SameSite=Strict cookie),
   like C{/signin/callback}.
4. The engine's lines as they happen (the page refreshes itself), with the PowerShell
   block to paste when Exchange's part must be done by hand, while it waits.
5. The end: a test message to the mailbox through this relay and doctor's checks; for
   the delegated method first the mailbox user's own sign-in button.

One wizard run per admin session.  Every POST carries the session's CSRF token (checked
by L{xrelay.admin.web.AdminSite}).  The admin's token lives only in the engine's thread
and is dropped at the end; nothing here logs it or puts it in a page.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable, Protocol

import attrs
from twisted.internet import defer
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.logger import Logger
from twisted.web.template import Tag, tags

from xrelay.admin import pages

__all__ = ["SetupWizard", "WizardRun"]

log = Logger(namespace="xrelay.admin")

#: Seconds a started admin sign-in may take before its state is forgotten.
SIGN_IN_TIMEOUT = 15 * 60.0

METHOD_LABELS = (
    ("smtp", "SMTP as an application (SMTP.SendAsApp; Exchange registers the app)"),
    ("graph", "Microsoft Graph as an application (Mail.Send; no SMTP AUTH needed)"),
    ("delegated", "SMTP signed in as the mailbox's user (SMTP.Send; no PowerShell)"),
)


@attrs.define
class WizardRun:
    """One admin's wizard: its state and what the engine said so far."""

    request: Any
    plan: Any
    state: str = "planned"  # planned, signing-in, running, done, failed
    lines: list[str] = attrs.field(factory=list)
    problem: str | None = None
    powershell: str | None = None
    device: dict[str, str] | None = None
    account: str | None = None
    #: C{"setup"} (a new account) or C{"rotate"} (a new certificate for C{account}).
    kind: str = "setup"
    rotate_mailbox: str = ""

    @property
    def mailbox(self) -> str:
        return self.rotate_mailbox if self.kind == "rotate" else str(self.request.mailbox)

    def plan_lines(self) -> list[str]:
        if self.kind == "rotate":
            return [f"Account {self.account}: a new certificate is made on this host and "
                    "added to its app registration (you sign in as an administrator); "
                    "the relay switches to it once Entra ID accepts it; the old one is "
                    "then removed from the app. Mail keeps flowing."]
        return list(self.plan.lines())
    test_result: str | None = None
    doctor: list[str] = attrs.field(factory=list)
    cancelled: bool = False


class AdminSite(Protocol):
    """
    What the wizard uses of the admin site that serves it (L{xrelay.admin.web}, which
    imports this module): its relay and reactor, and its page, form and redirect steps.
    """

    relay: Any
    reactor: Any

    async def _html(self, element: Any) -> bytes: ...

    def _redirect(self, request: Any, location: str) -> None: ...

    def _form(self, request: Any, name: str) -> str | None: ...

    def _redirect_uri(self, request: Any) -> str: ...


class SetupWizard:
    """The wizard's pages and actions; L{xrelay.admin.web.AdminSite} routes to them."""

    def __init__(self, site: AdminSite) -> None:
        self.site = site
        #: session id -> its run.
        self.runs: dict[str, WizardRun] = {}
        #: state -> (session id, msal flow, sign-in, started at).
        self.pending: dict[str, tuple[str, dict[str, Any], Any, float]] = {}

    @property
    def relay(self) -> Any:
        return self.site.relay

    @property
    def reactor(self) -> Any:
        return self.site.reactor

    # -- pages ---------------------------------------------------------------------------

    async def page(self, request: Any, session: Any) -> bytes:
        run = self.runs.get(session.identifier)
        refresh = "/setup" if run is not None and run.state in (
            "signing-in", "running", "checking") else None
        notice, session.notice = session.notice, None
        return await self.site._html(pages.Page(
            "add an account", self._body(run, session.csrf_token, request),
            csrf=session.csrf_token, notice=notice, current="setup", refresh_to=refresh))

    def _body(self, run: WizardRun | None, csrf: str, request: Any) -> list[Any]:
        if run is None:
            return self._form(csrf)
        body: list[Any] = []
        finished = run.state in ("done", "checking")
        if finished:
            body += self._done(run, csrf, request)
        if run.state == "failed":
            body.append(tags.p(f"Setup stopped: {run.problem}", class_="bad",
                               id="setup-problem"))
        plan = [tags.h2("The plan"), tags.ul(id="plan", class_="plain")(
            *[tags.li(line) for line in run.plan_lines()])]
        progress = [tags.h2("Progress"), tags.ul(class_="plain", id="progress")(
            *[tags.li(line.splitlines()[0]) for line in run.lines])] if run.lines else []
        if finished:
            # The result first; what was done stays one click away.
            body.append(tags.details(tags.summary("What was done"), *plan, *progress))
        else:
            body += plan
            if run.state == "planned":
                body.append(self._sign_in_choice(csrf, request))
            if run.device is not None and run.state == "signing-in":
                body.append(tags.p(id="device-code")(
                    "Sign in as an administrator of the tenant: open ",
                    tags.a(run.device["uri"], href=run.device["uri"], target="_blank",
                           rel="noopener noreferrer", id="device-link"),
                    " and enter the code ", tags.code(run.device["code"], id="user-code"),
                    ". This page follows by itself."))
            body += progress
        if run.powershell and run.state in ("running", "done", "checking"):
            body += [tags.h2("For an Exchange administrator"),
                     tags.p("Run these lines in PowerShell (values filled in); xrelay "
                            "waits until Exchange accepts the app:"),
                     tags.pre(run.powershell, id="powershell", class_="mono")]
        label = "Start again" if run.state in ("done", "failed") else "Cancel"
        body.append(tags.p(tags.form(method="post", action="/setup/reset", class_="inline")(
            pages.csrf_field(csrf), tags.button(label, type="submit", id="setup-reset"))))
        return body

    def _managed_table(self, csrf: str) -> list[Any]:
        accounts = self.managed_accounts()
        if not accounts:
            return []
        rows = []
        for a in accounts:
            actions: list[Any] = []
            if a.certificate_file:
                actions.append(tags.form(method="post", action="/setup/rotate")(
                    pages.csrf_field(csrf), tags.input(type="hidden", name="account",
                                                       value=a.name),
                    tags.button("Rotate certificate", type="submit",
                                id=f"rotate-{a.name}")))
            actions.append(tags.form(method="post", action="/setup/remove")(
                pages.csrf_field(csrf), tags.input(type="hidden", name="account",
                                                   value=a.name),
                tags.button("Remove", type="submit", class_="danger",
                            id=f"remove-{a.name}")))
            rows.append(tags.tr(tags.td(tags.strong(a.name)), tags.td(a.user),
                                tags.td(f"{a.flow} / {a.transport}", class_="small"),
                                tags.td(*actions, class_="actions")))
        return [tags.h2("Accounts set up by xrelay"),
                tags.table(id="managed-accounts")(
                    tags.tr(tags.th("account"), tags.th("mailbox"), tags.th("method"),
                            tags.th("")), *rows)]

    def _form(self, csrf: str) -> list[Any]:
        methods = []
        for value, label in METHOD_LABELS:
            attributes = {"type": "radio", "name": "method", "value": value,
                          "id": f"method-{value}"}
            if value == "smtp":
                attributes["checked"] = "checked"
            methods.append(tags.label(tags.input(**attributes), " ", label))
        return [
            tags.p("xrelay creates the app registration, its permission and a credential "
                   "in your Microsoft 365 tenant from one administrator sign-in, then "
                   "sends a test message. You see the plan before you sign in."),
            tags.form(method="post", action="/setup/plan", id="setup-form",
                      class_="setup")(
                pages.csrf_field(csrf),
                tags.label("Mailbox the relay sends from", for_="mailbox"),
                tags.input(type="email", name="mailbox", id="mailbox",
                           required="required", size="32", placeholder="relay@contoso.com"),
                tags.span("Method"), tags.div(*methods, class_="choices"),
                tags.label("Account name (optional)", for_="name"),
                tags.input(name="name", id="name", size="16",
                           placeholder="the mailbox's local part"),
                tags.label("Senders routed to it (optional)", for_="senders"),
                tags.input(name="senders", id="senders", size="40",
                           placeholder="scanner@contoso.com *@contoso.com (default: "
                           "the mailbox)"),
                tags.span("Credential"),
                tags.label(tags.input(type="checkbox", name="secret", value="1",
                                      id="secret"),
                           " a client secret instead of a certificate made on this host"),
                tags.span("Graph, large messages"),
                tags.label(tags.input(type="checkbox", name="large_messages", value="1",
                                      id="large-messages"),
                           " messages over 3 MB: also Mail.ReadWrite (Graph needs a draft "
                           "and an upload session for them)"),
                tags.span(), tags.button("Show the plan", type="submit", id="show-plan")),
            *self._managed_table(csrf),
        ]

    def _sign_in_choice(self, csrf: str, request: Any) -> Tag:
        if self._loopback_redirect(request) is not None:
            return tags.form(method="post", action="/setup/signin")(
                pages.csrf_field(csrf),
                tags.button("Sign in as administrator and set it up", type="submit",
                            id="setup-signin"),
                tags.span(" (Microsoft's sign-in page; you return here)",
                          class_="small muted"))
        return tags.form(method="post", action="/setup/device")(
            pages.csrf_field(csrf),
            tags.button("Show a sign-in code for the administrator", type="submit",
                        id="setup-device"))

    def _done(self, run: WizardRun, csrf: str, request: Any) -> list[Any]:
        body: list[Any] = [tags.p(f"Account {run.account} is set up for "
                                  f"{run.mailbox}.", class_="ok", id="setup-done")]
        account = self._account(run.account)
        if account is not None and account.flow in ("auth_code", "device_code"):
            state = self.relay.tokens.status().get(account.name)
            if state is None or state.state not in ("ok", "expiring"):
                from xrelay.admin.pages import _sign_in_form

                body += [tags.p(f"Now {account.user}'s user signs in once:"),
                         _sign_in_form(account, csrf, self.site._redirect_uri(request))]
        if run.state == "checking":
            body.append(tags.p(f"Sending a test message to {run.mailbox} and "
                               "running doctor's checks...", id="checking"))
        else:
            body.append(tags.form(method="post", action="/setup/test", class_="inline")(
                pages.csrf_field(csrf), tags.button(
                    f"Send a test message to {run.mailbox}", type="submit",
                    id="setup-test")))
        if run.test_result:
            good = run.test_result.startswith("delivered")
            body.append(tags.p(f"Test message: {run.test_result}", id="test-result",
                               class_="ok" if good else "bad"))
        if run.doctor:
            body += [tags.h2("xrelay doctor"), tags.pre("\n".join(run.doctor),
                                                         id="doctor", class_="mono")]
        return body

    # -- actions ---------------------------------------------------------------------------

    async def plan(self, request: Any, session: Any) -> None:
        from xrelay.setup.plan import BadRequest, SetupRequest, make_plan

        form = self.site._form
        try:
            setup_request = SetupRequest(
                (form(request, "mailbox") or "").strip(), form(request, "method") or "smtp",
                (form(request, "name") or "").strip() or None,
                tuple((form(request, "senders") or "").split()),
                "secret" if form(request, "secret") else "certificate",
                bool(form(request, "large_messages")))
        except BadRequest as e:
            session.notice = str(e)
            return self.site._redirect(request, "/setup")
        config = self.relay.config
        self.runs[session.identifier] = WizardRun(setup_request, make_plan(
            setup_request, config.setup, config.server.hostname))
        self.site._redirect(request, "/setup")

    async def reset(self, request: Any, session: Any) -> None:
        run = self.runs.pop(session.identifier, None)
        if run is not None:
            run.cancelled = True
        self.site._redirect(request, "/setup")

    def _signin(self) -> Any:
        from xrelay.setup.signin import AdminSignIn
        from xrelay.tokens.trust import trust_bundle

        config = self.relay.config
        return AdminSignIn(config.setup, trust_bundle(config.server.state_dir,
                                                      config.setup.ca_file))

    def _loopback_redirect(self, request: Any) -> str | None:
        """C{http://localhost:PORT/} when this page is served on loopback, else None."""
        redirect = self.site._redirect_uri(request)
        if not redirect.startswith("http://localhost:"):
            return None
        return redirect[:-len("signin/callback")]

    async def sign_in(self, request: Any, session: Any) -> None:
        run = self._run_in(session, "planned")
        redirect = self._loopback_redirect(request)
        if run is None or redirect is None:
            return self.site._redirect(request, "/setup")
        signin = self._signin()
        from xrelay.setup.plan import SetupRefused

        try:
            url, flow = await deferToThread(signin.start_auth_code, redirect)
        except SetupRefused as e:
            session.notice = str(e)
            return self.site._redirect(request, "/setup")
        now = self.reactor.seconds()
        self.pending = {s: p for s, p in self.pending.items()
                        if now - p[3] < SIGN_IN_TIMEOUT}
        self.pending[str(flow.get("state") or secrets.token_urlsafe(16))] = (
            session.identifier, flow, signin, now)
        run.state = "signing-in"
        log.info("admin: setup wizard sign-in for {mailbox} started",
                 mailbox=run.mailbox)
        self.site._redirect(request, url)

    def owns(self, request: Any) -> bool:
        """Whether a request to C{/} is the identity platform returning to the wizard."""
        state = request.args.get(b"state")
        return bool(state) and state[0].decode("utf-8", "replace") in self.pending

    async def callback(self, request: Any) -> bytes:
        """C{/?code=...&state=...}: authorised by the single-use state, not the cookie."""
        params = {k.decode("utf-8", "replace"): v[0].decode("utf-8", "replace")
                  for k, v in request.args.items() if v}
        session_id, flow, signin, started = self.pending.pop(params.get("state", ""))
        run = self.runs.get(session_id)
        if run is not None and self.reactor.seconds() - started <= SIGN_IN_TIMEOUT:
            self._start(run, lambda: signin.finish_auth_code(flow, params), request)
        return await self.site._html(pages.Page("add an account", pages.message_body(
            "Back from the sign-in; the setup continues.", "/setup", "Continue"),
            refresh_to="/setup"))

    async def device(self, request: Any, session: Any) -> None:
        run = self._run_in(session, "planned")
        if run is None:
            return self.site._redirect(request, "/setup")
        from xrelay.setup.plan import SetupRefused

        signin = self._signin()
        try:
            flow = await deferToThread(signin.start_device)
        except SetupRefused as e:
            session.notice = str(e)
            return self.site._redirect(request, "/setup")
        run.device = {"uri": str(flow["verification_uri"]), "code": str(flow["user_code"])}
        run.state = "signing-in"
        self._start(run, lambda: signin.finish_device(flow), request)
        self.site._redirect(request, "/setup")

    async def test(self, request: Any, session: Any) -> None:
        run = self._run_in(session, "done")
        if run is not None and run.account is not None:
            defer.ensureDeferred(self._test_and_doctor(run)).addErrback(
                lambda f: log.failure("admin: setup wizard's checks failed", f))
        self.site._redirect(request, "/setup")

    def _run_in(self, session: Any, state: str) -> WizardRun | None:
        run = self.runs.get(session.identifier)
        return run if run is not None and run.state == state else None

    def _account(self, name: str | None) -> Any:
        try:
            return self.relay.config.account(name) if name else None
        except KeyError:
            return None

    # -- the engine, in a thread ------------------------------------------------------------

    def _start(self, run: WizardRun, finish_sign_in: Callable[[], Any],
               request: Any) -> None:
        from xrelay.setup.engine import SetupEngine
        from xrelay.setup.plan import SetupRefused
        from xrelay.tokens.trust import trust_bundle

        config = self.relay.config
        delegated_redirect = (self.site._redirect_uri(request)
                              if run.kind == "setup" and run.request.method == "delegated"
                              else None)
        engine = SetupEngine(
            config, run.plan, run.lines.append,
            trust_bundle(config.server.state_dir, config.setup.ca_file),
            current_config=lambda: self.relay.config,
            reload=lambda: blockingCallFromThread(self.reactor, self.relay.reload),
            callback_uri=delegated_redirect, actor="admin page",
            poll_interval=1.0 if config.setup.ca_file else 10.0,
            cancelled=lambda: run.cancelled)

        def work() -> Any:
            admin = finish_sign_in()
            run.state = "running"
            if run.kind == "rotate":
                return self._rotation(run).run(admin)
            try:
                return engine.run(admin)
            finally:
                run.powershell = engine.powershell

        def done(result: Any) -> Any:
            needs_user = getattr(result, "needs_user_sign_in", False)
            run.account = getattr(result, "account", run.account)
            run.state = "checking" if not needs_user else "done"
            log.info("admin: setup wizard: account {account} {what}", account=run.account,
                     what="rotated" if run.kind == "rotate" else "set up")
            if not needs_user:
                return defer.ensureDeferred(self._test_and_doctor(run))
            return None

        def failed(failure: Any) -> None:
            run.state = "failed"
            if failure.check(SetupRefused):
                run.problem = str(failure.value)
            else:
                log.failure("admin: setup wizard failed", failure=failure)
                run.problem = "an internal error; the relay's log has the details"
            log.warn("admin: setup wizard for {mailbox} stopped: {problem}",
                     mailbox=run.mailbox, problem=run.problem)

        run.state = "running" if run.state != "signing-in" else run.state
        d = deferToThread(work)
        d.addCallbacks(done, failed)
        d.addErrback(lambda f: log.failure("admin: setup wizard's checks failed", f))

    def _rotation(self, run: WizardRun) -> Any:
        from xrelay.setup.rotate import CertificateRotation, rotatable
        from xrelay.tokens.trust import trust_bundle

        config = self.relay.config
        return CertificateRotation(
            config, rotatable(config, str(run.account)), run.lines.append,
            trust_bundle(config.server.state_dir, config.setup.ca_file),
            current_config=lambda: self.relay.config,
            reload=lambda: blockingCallFromThread(self.reactor, self.relay.reload),
            poll_interval=1.0 if config.setup.ca_file else 10.0)

    def managed_accounts(self) -> list[Any]:
        config = self.relay.config
        return [a for a in config.accounts
                if "/managed/accounts/" in (config.origin("accounts", a.name) or "")]

    async def rotate(self, request: Any, session: Any) -> None:
        from xrelay.setup.plan import SetupRefused
        from xrelay.setup.rotate import rotatable

        name = self.site._form(request, "account") or ""
        try:
            account = rotatable(self.relay.config, name)
        except SetupRefused as e:
            session.notice = str(e)
            return self.site._redirect(request, "/setup")
        self.runs[session.identifier] = WizardRun(None, None, kind="rotate", account=name,
                                                  rotate_mailbox=account.user)
        self.site._redirect(request, "/setup")

    async def remove(self, request: Any, session: Any) -> None:
        from xrelay import managed

        name = self.site._form(request, "account") or ""
        try:
            change = managed.remove_account(self.relay.config, name, actor="admin page",
                                            reload=self.relay.reload)
            session.notice = (f"Account {name} removed ({change.path} deleted); its "
                              "certificate and key files stay until you delete them, and "
                              "its app registration stays in Entra ID.")
        except managed.ManagedRefused as e:
            session.notice = str(e)
        self.site._redirect(request, "/setup")

    async def _test_and_doctor(self, run: WizardRun) -> None:
        from xrelay.operations.control import ControlRefusal
        from xrelay.operations.doctor import Doctor
        from xrelay.operations.testmessage import send_test_message

        run.state = "checking"
        try:
            try:
                result = await send_test_message(self.relay, run.mailbox,
                                                 run.account)
                run.test_result = f"{result['outcome']} ({result['reply']})"
            except ControlRefusal as e:
                run.test_result = f"not sent: {e}"
            account = self._account(run.account)
            if account is not None:
                doctor = Doctor(self.relay.config, account)
                steps = await deferToThread(doctor.run)
                run.doctor = [line for step in steps for line in step.lines()]
        finally:
            run.state = "done"
