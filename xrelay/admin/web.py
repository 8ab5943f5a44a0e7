"""
The admin web site: routing, sign-in, CSRF checks and security headers.

Policy lives here, once, for every page: every response carries the security headers;
every page but the sign-in form, the stylesheet, C{/healthz} (whose detail, and
C{/metrics}, need a session or C{admin.monitoring_networks}) and the identity platform's
return needs a signed-in session; every POST needs the session's CSRF token in its form
body, and an C{Origin} of this site when the browser sends one.  A refused
request gets a short page and a log line with the client's address, never a traceback.

The pages themselves live beside it, one module per job: the accounts' browser sign-in
(L{xrelay.admin.accountsignin}, started by a POST so that no other site can start one,
its return authorised by the flow's state, not the cookie), the "Add an account" wizard
(L{xrelay.admin.setup_wizard}), the Devices page (L{xrelay.admin.devices}); what every
route uses of a request is L{xrelay.admin.http}'s.

This module never logs a password, a session id, a CSRF token, a code or a token.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.template import flattenString

from xrelay.admin import pages
from xrelay.admin.accountsignin import (AccountSignIn, callback_uri, can_sign_in,
                                        sign_in_url)
from xrelay.admin.glance import account_views, overall_line
from xrelay.admin.lockout import (ADMIN_ACCOUNT, DEVICE_COOKIE, DEVICE_MAX_AGE,
                                  FAILURE_WINDOW, MAX_FAILURES, SignInGuard)
from xrelay.admin.http import (Refused, client_address, client_in, form_body_field,
                               origin_of, security_headers, text_of)
from xrelay.admin.sessions import COOKIE_NAME, Session, SessionStore, cookie_name
from xrelay.interfaces import ISpool, UnknownEntry
from xrelay.operations.queue import QueueOperations, QueueProblem

__all__ = ["AdminSite", "callback_uri", "security_headers"]

log = Logger(namespace="xrelay.admin")


class AdminSite(Resource):
    """
    The whole admin site as one leaf resource.

    @param relay: the running relay (C{config}, C{spool}, C{delivery}, C{tokens}).
    @param metrics: the relay's L{RelayMetrics}, served at C{/metrics}.
    @param reactor: for the clock and the thread pool (password checks).
    @param verify: checks a password against the configured hash (blocking; run in a
        thread).
    """

    isLeaf = True

    def __init__(self, relay: Any, metrics: Any, reactor: Any,
                 verify: Callable[[str, str], bool] | None = None) -> None:
        super().__init__()
        from xrelay.passwords import verify_password

        self.relay = relay
        self.metrics = metrics
        self.reactor = reactor
        self.verify = verify or verify_password
        self.sessions = SessionStore(reactor)
        #: The accounts' browser sign-in (its flows under way).
        self.account_sign_in = AccountSignIn(self)
        #: Wrong passwords per source and for the account (L{SignInGuard}).
        self.guard = SignInGuard()
        from xrelay.admin.setup_wizard import SetupWizard

        #: The "Add an account" wizard at /setup.
        self.setup_wizard = SetupWizard(self)
        self.failures = self.guard.failures
        from xrelay.admin.devices import DevicesPages

        #: The Devices page and its admit forms.
        self.devices = DevicesPages(self)
        # The routes are built once, not per request.
        self.routes, self.authenticated = self._route_table()

    @property
    def config(self) -> Any:
        return self.relay.config

    # -- plumbing ----------------------------------------------------------------

    def render(self, request: Any) -> Any:
        targets = {origin_of(sign_in_url(a)) for a in self.config.accounts
                   if can_sign_in(a)}
        if text_of(request.path).startswith("/setup"):
            # The wizard's admin sign-in form redirects to the setup's authority.
            targets.add(origin_of(self.config.setup.authority))
        form_targets = sorted(targets)
        for name, value in security_headers(form_targets).items():
            request.setHeader(name, value)
        d = defer.ensureDeferred(self._dispatch(request))
        d.addErrback(self._crashed, request)
        return NOT_DONE_YET

    def _crashed(self, failure: Any, request: Any) -> None:
        log.failure("admin: {method} {path} failed", failure=failure,
                    method=text_of(request.method), path=text_of(request.path))
        if not request.finished and not getattr(request, "_disconnected", False):
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.write(b"Internal error; the relay's log has the details.\n")
            request.finish()

    def _route_table(self) -> tuple[
            dict[tuple[str, str], Callable[[Any], Awaitable[Any]]],
            dict[tuple[str, str], Callable[[Any, Session], Awaitable[Any]]]]:
        """(method, path) -> page: the public pages, and those that need a session."""
        routes: dict[tuple[str, str], Callable[[Any], Awaitable[Any]]] = {
            ("GET", "/style.css"): self.style,
            ("GET", "/metrics"): self.metrics_page,
            ("GET", "/healthz"): self.healthz,
            ("GET", "/login"): self.login_form,
            ("POST", "/login"): self.login,
            ("GET", "/signin/callback"): self.account_sign_in.callback,
        }
        authenticated: dict[tuple[str, str], Callable[[Any, Session], Awaitable[Any]]] = {
            ("GET", "/"): self.status_page,
            ("GET", "/queue"): self.queue_page,
            ("GET", "/trace"): self.trace_page,
            ("GET", "/trace/entry"): self.entry_page,
            ("POST", "/queue/bounce"): self.queue_bounce,
            ("POST", "/logout"): self.logout,
            ("POST", "/queue/retry"): self.queue_retry,
            ("POST", "/queue/delete"): self.queue_delete,
            ("POST", "/queue/retry-all"): self.queue_retry_all,
            ("POST", "/signin"): self.account_sign_in.start,
            ("GET", "/setup"): self.setup_wizard.page,
            ("POST", "/setup/plan"): self.setup_wizard.plan,
            ("POST", "/setup/signin"): self.setup_wizard.sign_in,
            ("POST", "/setup/device"): self.setup_wizard.device,
            ("POST", "/setup/reset"): self.setup_wizard.reset,
            ("POST", "/setup/test"): self.setup_wizard.test,
            ("POST", "/setup/rotate"): self.setup_wizard.rotate,
            ("POST", "/setup/remove"): self.setup_wizard.remove,
            ("GET", "/devices"): self.devices.page,
            ("POST", "/devices/allow"): self.devices.allow,
            ("POST", "/devices/password"): self.devices.password,
        }
        return routes, authenticated

    def allowed_methods(self, path: str) -> list[str]:
        """The methods some page answers at C{path} (none: there is no such page)."""
        return sorted({m for m, p in [*self.routes, *self.authenticated] if p == path})

    async def _dispatch(self, request: Any) -> None:
        method, path = text_of(request.method), text_of(request.path)
        routes, authenticated = self.routes, self.authenticated
        try:
            if (method, path) == ("GET", "/") and self.setup_wizard.owns(request):
                # The identity platform's return to the wizard's admin sign-in.
                body = await self.setup_wizard.callback(request)
            elif (method, path) in routes:
                body = await routes[method, path](request)
            elif (method, path) in authenticated:
                session = self._session(request)
                if session is None or not session.authenticated:
                    if method == "GET":
                        return self._redirect(request, "/login")
                    log.warn("admin: unauthenticated {method} {path} from {client} refused",
                             method=method, path=path, client=client_address(request))
                    raise Refused(403, "Sign in first.")
                if method == "POST":
                    self._check_csrf(request, session, path)
                body = await authenticated[method, path](request, session)
            elif allowed := self.allowed_methods(path):
                raise Refused(405, "Method not allowed.",
                              {b"allow": ", ".join(allowed).encode("ascii")})
            else:
                raise Refused(404, "No such page.")
        except Refused as e:
            request.setResponseCode(e.code)
            for name, value in e.headers.items():
                request.setHeader(name, value)
            body = await self._html(pages.Page("refused", pages.message_body(e.text)))
        if body is None or request.finished:
            return
        if isinstance(body, tuple):
            content_type, body = body
        else:
            content_type = b"text/html; charset=utf-8"
        request.setHeader(b"content-type", content_type)
        request.write(body)
        request.finish()

    async def _html(self, element: Any) -> bytes:
        return b"<!DOCTYPE html>\n" + await flattenString(None, element)

    def _redirect(self, request: Any, location: str) -> None:
        request.setResponseCode(303)
        request.setHeader(b"location", location.encode("utf-8"))
        request.finish()

    def _cookie(self, request: Any, base: str = COOKIE_NAME) -> bytes:
        """This listener's name for one of the site's cookies (L{cookie_name})."""
        port = getattr(request.getHost(), "port", 0)
        return cookie_name(base, port, self._secure(request)).encode("ascii")

    def _session(self, request: Any) -> Session | None:
        cookie = request.getCookie(self._cookie(request))
        return self.sessions.get(cookie.decode("ascii", "replace") if cookie else None)

    def _session_or_new(self, request: Any) -> Session:
        session = self._session(request)
        if session is None:
            session = self.sessions.new()
            self._set_cookie(request, session)
        return session

    def _secure(self, request: Any) -> bool:
        """
        Whether cookies get C{Secure}: when this request came over TLS, or browsers
        reach the page at an https C{public_url} (TLS ends at a proxy).  On plain HTTP
        they do not, since a browser may refuse to store or send back a C{Secure} cookie
        for an http:// page; plain HTTP is meant for the loopback default only, where
        the cookie never crosses a network (README, "Admin page").
        """
        return bool(request.isSecure() or (self.config.admin.public_url or "")
                    .startswith("https://"))

    def _set_cookie(self, request: Any, session: Session) -> None:
        request.addCookie(self._cookie(request), session.identifier.encode("ascii"),
                          path=b"/", httpOnly=True, sameSite="strict",
                          secure=self._secure(request))

    def _form(self, request: Any, name: str) -> str | None:
        values = request.args.get(name.encode("ascii"))
        if not values:
            return None
        return values[0].decode("utf-8", "replace")

    def _check_csrf(self, request: Any, session: Session, path: str) -> None:
        """
        A POST must carry the session's token in its form body (never the query string,
        which leaks through logs, history and Referer) and, when the browser names its
        C{Origin}, come from this site.
        """
        origin = request.getHeader(b"origin")
        if origin is not None and origin not in self._own_origins(request):
            log.warn("admin: POST {path} from {client} refused: Origin {origin} is not "
                     "this site", path=path, client=client_address(request),
                     origin=origin.decode("ascii", "replace")[:200])
            raise Refused(403, "This form did not come from this site's page; open the "
                          "admin page at its own address and try again.")
        if not session.csrf_matches(form_body_field(request, "csrf_token")):
            log.warn("admin: POST {path} from {client} refused: CSRF token missing or "
                     "wrong", path=path, client=client_address(request))
            raise Refused(403, "This form has expired or did not come from this page; "
                          "reload the page and try again.")

    def _own_origins(self, request: Any) -> set[bytes]:
        """
        The origins this site's own pages have: C{admin.public_url}'s, and the address
        the browser used (its C{Host:}; a forged one makes no difference here, since
        a browser sending a cross-site form names the other site as its origin).
        """
        own = {f"{'https' if request.isSecure() else 'http'}://".encode("ascii")
               + (request.getHeader(b"host") or b"")}
        if self.config.admin.public_url:
            own.add(origin_of(self.config.admin.public_url).encode("utf-8"))
        return own

    def may_monitor(self, request: Any) -> bool:
        """
        Whether this request may read the relay's details (C{/healthz} in full,
        C{/metrics}): a signed-in session, or a client in C{admin.monitoring_networks}.
        """
        session = self._session(request)
        if session is not None and session.authenticated:
            return True
        return client_in(getattr(self.config.admin, "monitoring_networks", ()),
                         client_address(request))

    def _redirect_uri(self, request: Any) -> str:
        """The sign-in redirect URI of this listener, for the wizard too."""
        return self.account_sign_in.redirect_uri(request)

    # -- public pages --------------------------------------------------------------

    async def style(self, request: Any) -> tuple[bytes, bytes]:
        return b"text/css; charset=utf-8", pages.STYLE

    async def metrics_page(self, request: Any) -> tuple[bytes, bytes]:
        """The metrics name accounts, listeners and counts: not for strangers."""
        from xrelay.operations.metrics import CONTENT_TYPE

        if not self.may_monitor(request):
            log.warn("admin: GET /metrics from {client} refused: not signed in and not "
                     "in admin.monitoring_networks", client=client_address(request))
            raise Refused(403, "Sign in first, or add the monitoring server's network "
                          "to admin.monitoring_networks.")
        return CONTENT_TYPE.encode("ascii"), self.metrics.exposition()

    async def healthz(self, request: Any) -> tuple[bytes, bytes]:
        """
        The health report as JSON, 200 when healthy, else 503.  Without a password it
        says only whether the relay is healthy and the names of the failed checks; the
        detail (paths, PID, listeners, accounts and their errors) is for a signed-in
        session or C{admin.monitoring_networks}.
        """
        import json

        from xrelay.operations.health import health_report, public_health

        report = health_report(self.relay)
        request.setResponseCode(200 if report["healthy"] else 503)
        if not self.may_monitor(request):
            report = public_health(report)
        return b"application/json", json.dumps(report, indent=1).encode("utf-8")

    async def login_form(self, request: Any, error: str | None = None) -> bytes:
        session = self._session_or_new(request)
        if session.authenticated and error is None:
            self._redirect(request, "/")
            return b""
        return await self._html(pages.Page("sign in", pages.login_body(session.csrf_token,
                                                                       error)))

    async def login(self, request: Any) -> bytes | None:
        session = self._session(request)
        if session is None:
            # No session cookie: the form did not come from our page (or it expired).
            log.warn("admin: sign-in from {client} without a session refused",
                     client=client_address(request))
            request.setResponseCode(403)
            return await self.login_form(request, "Your session expired; try again.")
        self._check_csrf(request, session, "/login")
        client = client_address(request)
        source = self.guard.source(client, request.getCookie(
            self._cookie(request, DEVICE_COOKIE)))
        # Counted from now, before the slow check: concurrent guesses share the limit.
        attempt = self.failures.begin(source, ADMIN_ACCOUNT, self.reactor.seconds())
        if attempt is None:
            log.warn("admin: sign-in from {client} refused: {count} wrong passwords in "
                     "the last {window:.0f}s", client=client, count=MAX_FAILURES,
                     window=FAILURE_WINDOW)
            request.setResponseCode(429)
            return await self.login_form(request, "Too many wrong passwords; wait a few "
                                         "minutes and try again.")
        ok = False
        try:
            if attempt.delay:
                # Others have been failing for this account: slower, never locked out.
                await deferLater(self.reactor, attempt.delay, lambda: None)
            password = self._form(request, "password") or ""
            expected = self.config.admin.password_hash
            if expected and password:
                ok = await deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                             self.verify, password, expected)
        finally:
            self.failures.finish(attempt, ok, self.reactor.seconds())
        if not ok:
            log.warn("admin: wrong password from {client}", client=client)
            request.setResponseCode(403)
            return await self.login_form(request, "Wrong password.")
        fresh = self.sessions.authenticate(session)
        self._set_cookie(request, fresh)
        # This browser is known now: a lockout of its address no longer holds it out.
        request.addCookie(self._cookie(request, DEVICE_COOKIE),
                          self.guard.device_cookie().encode("ascii"), path=b"/",
                          max_age=str(DEVICE_MAX_AGE), httpOnly=True, sameSite="strict",
                          secure=self._secure(request))
        log.info("admin: signed in from {client}", client=client)
        self._redirect(request, "/")
        return None

    # -- signed-in pages -------------------------------------------------------------

    async def logout(self, request: Any, session: Session) -> None:
        self.sessions.end(session)
        request.addCookie(self._cookie(request), b"", path=b"/", max_age="0",
                          httpOnly=True, sameSite="strict", secure=self._secure(request))
        self._redirect(request, "/login")

    async def status_page(self, request: Any, session: Session) -> bytes:
        statuses = self.relay.tokens.status()
        engine = self.relay.delivery.status()
        from xrelay.tokens.expiry import soonest_by_account

        expiries = self.relay.tokens.expiries()
        tls = min((e for e in expiries if e.scope == "listener"),
                  key=lambda e: e.expires_at, default=None)
        views = account_views(self.config.accounts, statuses, engine.paused_until,
                              self.reactor.seconds(), engine.accounts,
                              soonest_by_account(expiries))
        overall = overall_line(views, engine.counts, engine.oldest_age)
        accounts = {a.name: a for a in self.config.accounts}

        def sign_in_for(name: str) -> Any:
            account = accounts.get(name)
            return account if account is not None and can_sign_in(account) else None
        notice, session.notice = session.notice, None
        return await self._html(pages.Page("status", pages.status_body(
            overall, views, engine.counts, engine.oldest_age, engine.recent,
            session.csrf_token, sign_in_for, tls, redirect_uri=self._redirect_uri(request)),
            csrf=session.csrf_token, notice=notice,
            current="status"))

    @property
    def spool(self) -> ISpool:
        """The relay's spool: the pages use nothing of it beyond L{ISpool}."""
        return self.relay.spool

    def _queue(self) -> QueueOperations:
        return QueueOperations(self.spool, self.config, self.relay.delivery)

    async def queue_page(self, request: Any, session: Session) -> bytes:
        from xrelay.lifecycle import STATES as LIVE
        from xrelay.operations.queue import PAGE_SIZE, SHOWN_STATES, queue_slice

        notice, session.notice = session.notice, None
        state = self._form(request, "state") or None
        if state not in SHOWN_STATES and state not in LIVE:
            state = None
        try:
            offset = max(int(self._form(request, "offset") or 0), 0)
        except ValueError:
            offset = 0
        # Only the page's rows are read, in a thread: 40,000 entries blocked every
        # SMTP session for 24 s when the whole queue was read and rendered here.
        text = (self._form(request, "q") or "").strip()[:200] or None
        page = await deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                       queue_slice, self.spool, state, offset, PAGE_SIZE,
                                       text)
        return await self._html(pages.Page("queue", pages.queue_body(
            page.entries, session.csrf_token, page), csrf=session.csrf_token,
            notice=notice, current="queue"))

    def _history_path(self) -> str:
        from xrelay.history import history_path

        return history_path(self.config.server.state_dir)

    async def trace_page(self, request: Any, session: Session) -> bytes:
        """The message trace's search: a GET form, so a search is a link to share."""
        from xrelay.history import HistoryMissing, TraceQuery, parse_since, search

        values = {name: (self._form(request, name) or "").strip()
                  for name in ("from", "to", "subject", "since", "status", "client")}
        problem, messages = None, None
        try:
            since = parse_since(values["since"]) if values["since"] else None
            query = TraceQuery(sender=values["from"] or None, recipient=values["to"] or None,
                               subject=values["subject"] or None, since=since,
                               status=values["status"] or None,
                               client=values["client"] or None)
            messages = await deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                               search, self._history_path(), query)
        except ValueError as e:
            problem = str(e).replace("--since", "Since")
        except HistoryMissing as e:
            problem = str(e)
        return await self._html(pages.Page("message trace", pages.trace_body(
            values, messages, problem), csrf=session.csrf_token, current="trace"))

    async def entry_page(self, request: Any, session: Session) -> bytes:
        """One message's whole story, with the full upstream replies."""
        from xrelay.history import HistoryMissing, story

        entry_id = (self._form(request, "id") or "").strip()
        found = None
        try:
            found = await deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                            story, self._history_path(), entry_id)
        except HistoryMissing as e:
            return await self._html(pages.Page("message " + entry_id, pages.message_body(
                str(e), "/trace", "Back to the trace"), csrf=session.csrf_token,
                current="trace"))
        try:
            in_queue: str | None = self.spool.get(entry_id).state
        except UnknownEntry:
            in_queue = None
        return await self._html(pages.Page("message " + entry_id, pages.entry_body(
            found, entry_id, in_queue), csrf=session.csrf_token, current="trace"))

    async def _queue_action(self, request: Any, session: Session, action: str) -> None:
        entry_id = self._form(request, "id") or ""
        try:
            if action == "retry":
                queue = self._queue()
                await queue.retry(entry_id)
                session.notice = " ".join([f"{entry_id} is due now."] + queue.notes)
            elif action == "bounce":
                entry = await self._queue().bounce(entry_id)
                session.notice = f"{entry_id} bounced to its sender."
                log.info("{entry_id} from <{sender}> bounced by the operator on the admin "
                         "page", entry_id=entry_id, sender=entry.sender)
            else:
                entry = await self._queue().delete(entry_id)
                session.notice = f"{entry_id} deleted."
                log.info("{entry_id} from <{sender}> deleted by the operator on the admin "
                         "page", entry_id=entry_id, sender=entry.sender)
        except QueueProblem as e:
            session.notice = str(e)
        self._redirect(request, "/queue")

    async def queue_retry(self, request: Any, session: Session) -> None:
        await self._queue_action(request, session, "retry")

    async def queue_delete(self, request: Any, session: Session) -> None:
        await self._queue_action(request, session, "delete")

    async def queue_bounce(self, request: Any, session: Session) -> None:
        await self._queue_action(request, session, "bounce")

    async def queue_retry_all(self, request: Any, session: Session) -> None:
        queue = self._queue()
        count = await queue.retry_all()
        session.notice = " ".join([f"{count} entries are due now."] + queue.notes)
        self._redirect(request, "/queue")
