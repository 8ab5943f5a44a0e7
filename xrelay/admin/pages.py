"""
The admin page's HTML, built with C{twisted.web.template} tags so that every value
(addresses, upstream replies, account names) is escaped by the flattener: nothing here
concatenates markup with data.

Pages are plain forms and tables with stable element ids (C{state-<account>},
C{signin-<account>}, C{retry-<id>}, C{delete-<id>}) for people, scripts and the browser
test.  No inline script or style: the Content-Security-Policy forbids both.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from twisted.web.template import Element, Tag, TagLoader, renderer, tags

__all__ = ["Page", "login_body", "status_body", "queue_body", "message_body", "STYLE"]

STYLE = b"""
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
nav a, nav button { margin-right: 1em; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
.ok { color: #176317; } .bad { color: #a01010; font-weight: bold; }
.notice { background: #eef6ff; padding: 0.5em; border: 1px solid #9bc; }
.reply { font-family: monospace; }
form.inline { display: inline; }
"""

#: Token states in which the account delivers.
GOOD_STATES = {"ok", "expiring", "refreshing"}


class Page(Element):
    """The frame of every page: title, navigation with sign-out, one notice, body."""

    def __init__(self, title: str, body: Tag | list[Any], csrf: str | None = None,
                 notice: str | None = None, refresh_to: str | None = None) -> None:
        self._title = title
        self._body = body
        self._csrf = csrf
        self._notice = notice
        self._refresh_to = refresh_to
        super().__init__(TagLoader(tags.html(lang="en")(
            tags.head(tags.meta(charset="utf-8"), tags.transparent(render="refresh"),
                      tags.title(render="title"),
                      tags.link(rel="stylesheet", href="/style.css")),
            tags.body(tags.transparent(render="nav"), tags.h1(render="title"),
                      tags.transparent(render="notice"),
                      tags.transparent(render="content")))))

    @renderer
    def title(self, request: Any, tag: Tag) -> Tag:
        return tag(f"xrelay: {self._title}")

    @renderer
    def refresh(self, request: Any, tag: Tag) -> Any:
        if self._refresh_to is None:
            return ""
        # A same-site navigation after the identity platform's cross-site redirect, so
        # that the SameSite=Strict session cookie is sent again.
        return tags.meta(**{"http-equiv": "refresh", "content": f"1;url={self._refresh_to}"})

    @renderer
    def nav(self, request: Any, tag: Tag) -> Any:
        if self._csrf is None:
            return ""
        return tags.nav(tags.a("Status", href="/"), tags.a("Queue", href="/queue"),
                        tags.a("Metrics", href="/metrics"),
                        tags.form(method="post", action="/logout", class_="inline")(
                            csrf_field(self._csrf),
                            tags.button("Sign out", type="submit", id="logout")))

    @renderer
    def notice(self, request: Any, tag: Tag) -> Any:
        if not self._notice:
            return ""
        return tags.p(self._notice, class_="notice", id="notice")

    @renderer
    def content(self, request: Any, tag: Tag) -> Any:
        return self._body


def csrf_field(token: str) -> Tag:
    return tags.input(type="hidden", name="csrf_token", value=token)


def login_body(csrf: str, error: str | None = None) -> list[Any]:
    return [
        tags.p(error, class_="bad", id="error") if error else "",
        tags.form(method="post", action="/login", id="login")(
            csrf_field(csrf),
            tags.label("Password ", tags.input(type="password", name="password",
                                               id="password", autocomplete="current-password",
                                               autofocus="autofocus")),
            tags.button("Sign in", type="submit", id="signin")),
    ]


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _sign_in_form(account: Any, csrf: str) -> Tag:
    provider = {"microsoft": "Microsoft", "google": "Google"}.get(account.provider,
                                                                  account.provider)
    return tags.form(method="post", action="/signin", class_="inline")(
        csrf_field(csrf), tags.input(type="hidden", name="account", value=account.name),
        tags.button(f"Sign in with {provider}", type="submit", id=f"signin-{account.name}"))


def status_body(accounts: Iterable[tuple[Any, Any]], counts: dict[str, int],
                oldest_age: float | None, recent: Iterable[Any], csrf: str,
                can_sign_in: Any) -> list[Any]:
    """
    @param accounts: (AccountConfig, TokenStatus or None) pairs.
    @param recent: the delivery engine's outcome records, oldest first.
    @param can_sign_in: account -> whether the browser sign-in applies to it.
    """
    rows = []
    for account, status in accounts:
        state = status.state if status is not None else "unknown"
        action: Any = ""
        if can_sign_in(account):
            action = _sign_in_form(account, csrf)
        rows.append(tags.tr(
            tags.td(account.name), tags.td(f"{account.provider} / {account.flow}"),
            tags.td(account.user),
            tags.td(state, id=f"state-{account.name}",
                    class_="ok" if state in GOOD_STATES else "bad"),
            tags.td(_when(status.expires_at if status else None)),
            tags.td((status.last_error or "") if status else "", class_="reply"),
            tags.td((status.hint or "") if status and state not in GOOD_STATES else ""),
            tags.td(action)))
    queue_rows = [tags.tr(tags.td(state), tags.td(str(count), id=f"count-{state}"))
                  for state, count in sorted(counts.items())]
    outcome_rows = [tags.tr(
        tags.td(_when(r.at)), tags.td(r.entry_id), tags.td(r.sender), tags.td(r.account),
        tags.td(r.outcome, id=f"outcome-{r.entry_id}",
                class_="ok" if r.outcome == "delivered" else "bad"),
        tags.td(r.reply, class_="reply")) for r in reversed(list(recent))]
    return [
        tags.h2("Accounts"),
        tags.table(id="accounts")(
            tags.tr(*[tags.th(h) for h in ("Account", "Provider / flow", "Mailbox",
                                            "Token", "Expires", "Last error", "What to do",
                                            "")]),
            *rows),
        tags.h2("Queue"),
        tags.table(id="queue-counts")(tags.tr(tags.th("State"), tags.th("Messages")),
                                      *queue_rows),
        tags.p("Oldest waiting message: ",
               f"{int(oldest_age)} s" if oldest_age is not None else "none"),
        tags.h2("Recent deliveries and failures"),
        tags.table(id="recent")(
            tags.tr(*[tags.th(h) for h in ("When", "Entry", "Sender", "Account",
                                            "Outcome", "Upstream reply")]),
            *outcome_rows),
    ]


def queue_body(entries: Iterable[Any], csrf: str) -> list[Any]:
    rows = []
    for e in entries:
        actions = []
        if e.state in ("queued", "deferred"):
            actions.append(_entry_form("/queue/retry", e.entry_id, "Retry", f"retry-{e.entry_id}",
                                       csrf))
        if e.state != "active":
            actions.append(_entry_form("/queue/delete", e.entry_id, "Delete",
                                       f"delete-{e.entry_id}", csrf))
        rows.append(tags.tr(
            tags.td(e.entry_id), tags.td(e.state, id=f"entry-state-{e.entry_id}"),
            tags.td(e.sender), tags.td(", ".join(e.recipients) or "-"),
            tags.td(str(e.attempts)), tags.td(_when(e.next_attempt)),
            tags.td(str(e.last_reply) if e.last_reply else getattr(e, "problem", ""),
                    class_="reply"),
            tags.td(*actions)))
    return [
        tags.form(method="post", action="/queue/retry-all")(
            csrf_field(csrf), tags.button("Retry all now", type="submit", id="retry-all")),
        tags.table(id="queue")(
            tags.tr(*[tags.th(h) for h in ("Entry", "State", "Sender", "Recipients",
                                            "Attempts", "Next attempt", "Last reply", "")]),
            *rows),
    ]


def _entry_form(action: str, entry_id: str, label: str, button_id: str, csrf: str) -> Tag:
    return tags.form(method="post", action=action, class_="inline")(
        csrf_field(csrf), tags.input(type="hidden", name="id", value=entry_id),
        tags.button(label, type="submit", id=button_id))


def message_body(text: str, link: str = "/", link_text: str = "Back") -> list[Any]:
    return [tags.p(text, id="message"), tags.p(tags.a(link_text, href=link, id="continue"))]
