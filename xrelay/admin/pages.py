"""
The admin page's HTML, built with C{twisted.web.template} tags so that every value
(addresses, upstream replies, account names, subjects) is escaped by the flattener:
nothing here concatenates markup with data.

Pages are plain forms and tables with stable element ids (C{overall},
C{state-<account>}, C{signin-<account>}, C{retry-<id>}, C{bounce-<id>},
C{delete-<id>}, C{trace-results}) for people, scripts and the browser test.  No inline
script or style: the Content-Security-Policy forbids both; the look is L{STYLE}, served
as C{/style.css}.  Tables have fixed layouts that fit a 1280-pixel window: long texts
wrap, upstream replies are folded (C{<details>}) with the whole text one click away and
on the entry's trace page.  Times are the server's local time with its zone.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence
from urllib.parse import urlencode

from twisted.web.template import Element, Tag, TagLoader, renderer, tags

from xrelay.admin.glance import GOOD_STATES, AccountView, age_text, expiry_text
from xrelay.history.query import local_time

__all__ = ["Page", "login_body", "status_body", "queue_body", "trace_body", "entry_body",
           "message_body", "STYLE", "GOOD_STATES"]

STYLE = b"""
*, *::before, *::after { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       color: #1d232a; background: #f4f5f7; }
header { background: #1f2d3d; color: #fff; padding: 0 1.5em; display: flex;
         align-items: center; gap: 2em; min-height: 3em; }
header .brand { font-weight: 650; letter-spacing: 0.02em; }
nav { display: flex; align-items: center; gap: 1.2em; flex: 1; }
nav a { color: #c9d6e3; text-decoration: none; padding: 0.8em 0 0.6em;
        border-bottom: 3px solid transparent; }
nav a:hover { color: #fff; }
nav a.current { color: #fff; border-bottom-color: #6ea8fe; }
nav form { margin-left: auto; }
main { padding: 1em 1.5em 2em; max-width: 1280px; }
h1 { font-size: 1.35em; margin: 0.4em 0 0.6em; font-weight: 600; }
h2 { font-size: 1.05em; margin: 1.6em 0 0.5em; font-weight: 600; }
a { color: #0b5cad; }
.overall { font-size: 1.2em; font-weight: 600; margin: 0.2em 0 1em; padding: 0.7em 1em;
           background: #fff; border-left: 6px solid #2e8b57; border-radius: 3px; }
.overall.bad { border-left-color: #c0392b; }
table { width: 100%; border-collapse: collapse; table-layout: fixed; background: #fff;
        border: 1px solid #dfe3e8; }
th, td { padding: 0.4em 0.55em; text-align: left; vertical-align: top;
         border-bottom: 1px solid #e6e9ed; overflow-wrap: anywhere; }
th { background: #eef1f5; font-weight: 600; font-size: 0.88em; color: #3a4550;
     overflow-wrap: normal; }
tr:last-child td { border-bottom: none; }
table.counts { width: auto; min-width: 16em; }
.ok { color: #1d7a3e; font-weight: 600; } .bad { color: #b3261e; font-weight: 600; }
.held { color: #b3261e; } .muted { color: #6a737d; } .small { font-size: 0.88em; }
.notice { background: #eef6ff; padding: 0.6em 0.9em; border: 1px solid #9bc3e6;
          border-radius: 3px; }
.reply, .mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 0.85em; }
details > summary { cursor: pointer; list-style-position: inside; }
details[open] > summary { color: #6a737d; }
form.inline { display: inline; }
form.setup { display: grid; grid-template-columns: 16em 1fr; gap: 0.7em 1em;
             align-items: center; background: #fff; border: 1px solid #dfe3e8;
             padding: 0.9em 1em; max-width: 62em; }
form.setup .choices label { display: block; margin: 0.1em 0; }
form.setup button { justify-self: start; }
pre.mono { white-space: pre-wrap; overflow-wrap: anywhere; background: #fff;
           border: 1px solid #dfe3e8; padding: 0.6em 0.8em; }
.actions { white-space: nowrap; }
.actions form { display: inline-block; margin: 0 0.25em 0.25em 0; }
button { font: inherit; font-size: 0.88em; padding: 0.2em 0.55em; border-radius: 3px;
         border: 1px solid #9aa5b1; background: #fff; color: #1d232a; cursor: pointer; }
button:hover { background: #eef1f5; }
button.danger { border-color: #d4938e; color: #8e1c14; }
header button { background: transparent; color: #c9d6e3; border-color: #52657a; }
form.search { display: flex; flex-wrap: wrap; gap: 0.6em 1em; align-items: end;
              background: #fff; border: 1px solid #dfe3e8; padding: 0.8em 1em; }
form.search label { display: flex; flex-direction: column; font-size: 0.85em;
                    color: #3a4550; gap: 0.2em; }
input, select { font: inherit; padding: 0.25em 0.4em; border: 1px solid #b8c1cc;
                border-radius: 3px; }
dl.facts { display: grid; grid-template-columns: 11em 1fr; gap: 0.3em 1em;
           background: #fff; border: 1px solid #dfe3e8; padding: 0.8em 1em; margin: 0; }
dl.facts dt { color: #5a6570; } dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.domain { display: inline-block; }
ul.plain { list-style: none; margin: 0; padding: 0; }
ul.plain li + li { margin-top: 0.3em; }
.p4 { width: 4%; } .p6 { width: 6%; } .p7 { width: 7%; } .p8 { width: 8%; } .p9 { width: 9%; }
.p10 { width: 10%; } .p11 { width: 11%; } .p12 { width: 12%; } .p13 { width: 13%; }
.p14 { width: 14%; } .p15 { width: 15%; } .p16 { width: 16%; } .p17 { width: 17%; }
.p18 { width: 18%; } .p20 { width: 20%; } .p24 { width: 24%; } .p30 { width: 30%; }
.p23 { width: 23%; } .p28 { width: 28%; } .p36 { width: 36%; } .p37 { width: 37%; } .p48 { width: 48%; }
"""


class Page(Element):
    """The frame of every page: title, navigation with sign-out, one notice, body."""

    def __init__(self, title: str, body: Tag | list[Any], csrf: str | None = None,
                 notice: str | None = None, refresh_to: str | None = None,
                 current: str | None = None) -> None:
        self._title = title
        self._body = body
        self._csrf = csrf
        self._notice = notice
        self._refresh_to = refresh_to
        self._current = current
        super().__init__(TagLoader(tags.html(lang="en")(
            tags.head(tags.meta(charset="utf-8"), tags.transparent(render="refresh"),
                      tags.meta(name="viewport", content="width=device-width"),
                      tags.title(render="title"),
                      tags.link(rel="stylesheet", href="/style.css")),
            tags.body(tags.header(tags.span("xrelay", class_="brand"),
                                  tags.transparent(render="nav")),
                      Tag("main")(tags.h1(render="heading"),
                                tags.transparent(render="notice"),
                                tags.transparent(render="content"))))))

    @renderer
    def title(self, request: Any, tag: Tag) -> Tag:
        return tag(f"xrelay: {self._title}")

    @renderer
    def heading(self, request: Any, tag: Tag) -> Tag:
        return tag(self._title[:1].upper() + self._title[1:])

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
        links = [tags.a(label, href=href, class_="current" if self._current == key else "")
                 for key, label, href in (("status", "Status", "/"),
                                          ("queue", "Queue", "/queue"),
                                          ("trace", "Trace", "/trace"),
                                          ("setup", "Add an account", "/setup"),
                                          ("devices", "Devices", "/devices"),
                                          ("metrics", "Metrics", "/metrics"))]
        return tags.nav(*links, tags.form(method="post", action="/logout", class_="inline")(
            csrf_field(self._csrf), tags.button("Sign out", type="submit", id="logout")))

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
    return local_time(timestamp)


def _dash(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _table(widths: Sequence[str | None], headers: Sequence[str], rows: list[Any],
           **attributes: Any) -> Tag:
    """A table with a heading for every column and fixed column widths (CSS classes)."""
    return tags.table(**attributes)(
        tags.colgroup(*[tags.col(class_=w) if w else tags.col() for w in widths]),
        tags.thead(tags.tr(*[tags.th(h, scope="col") for h in headers])),
        tags.tbody(*rows))


def address(text: str | None) -> Any:
    """An address that may wrap after its @ rather than anywhere."""
    if not text:
        return "<>"
    local, at, domain = text.partition("@")
    # An inline block may start a new line: no <wbr> (the flattener does not know it
    # is void) and nothing that a copy and paste would carry along.
    return [local + at, tags.span(domain, class_="domain")] if at else text


def addresses(texts: Sequence[str]) -> Any:
    if not texts:
        return "-"
    out: list[Any] = []
    for i, text in enumerate(texts):
        out += ([", "] if i else []) + [address(text)]
    return out


def folded(text: str | None, limit: int = 60) -> Any:
    """A long upstream reply folded to its start; the whole text one click away."""
    if not text:
        return "-"
    if len(text) <= limit:
        return text
    return tags.details(tags.summary(text[:limit].rstrip() + "…"), text)


def entry_link(entry_id: str) -> Tag:
    return tags.a(entry_id, href="/trace/entry?" + urlencode({"id": entry_id}),
                  class_="mono")


def _sign_in_form(account: Any, csrf: str, redirect_uri: str | None = None) -> Tag:
    provider = {"microsoft": "Microsoft", "google": "Google"}.get(account.provider,
                                                                  account.provider)
    form = tags.form(method="post", action="/signin", class_="inline")(
        csrf_field(csrf), tags.input(type="hidden", name="account", value=account.name),
        tags.button(f"Sign in with {provider}", type="submit", id=f"signin-{account.name}"))
    if redirect_uri is None:
        return form
    # The URI the relay sends: the app registration must list exactly this one.
    return tags.div(form, tags.br(), tags.span(
        "redirect URI (register it): ", tags.code(redirect_uri, class_="redirect-uri"),
        class_="small muted"))


def status_body(overall: tuple[str, bool], views: Iterable[AccountView],
                counts: dict[str, int], oldest_age: float | None, recent: Iterable[Any],
                csrf: str, sign_in_for: Any, tls_expiry: Any = None,
                redirect_uri: str | None = None) -> list[Any]:
    """
    @param overall: the one line at the top, and whether all is well.
    @param views: one row per account.
    @param recent: the delivery engine's outcome records, oldest first.
    @param sign_in_for: account name -> the account when the browser sign-in applies
        to it, else None.
    @param tls_expiry: the listeners' TLS certificate that ends first, if any.
    @param redirect_uri: the browser sign-in's redirect URI, shown beside each button.
    """
    line, good = overall
    rows = []
    for v in views:
        account = sign_in_for(v.name)
        action: Any = (_sign_in_form(account, csrf, redirect_uri) if account is not None
                       else "-")
        good_token = v.state in GOOD_STATES
        todo = (v.provider_fix if v.provider_held and good_token else
                v.hint if v.hint and not good_token else (v.last_error or "-"))
        rows.append(tags.tr(id=f"account-{v.name}")(
            tags.td(tags.strong(v.name), tags.br(),
                    tags.span(address(v.user), class_="small muted")),
            # First what decides whether mail flows (a hold: why, until when), then
            # the token: a held account with a good token is not "ok".
            tags.td(tags.span(v.mail_flow, id=f"account-state-{v.name}",
                              class_="ok" if v.delivering else "bad"),
                    tags.br(),
                    tags.span("token: ", tags.span(v.state, id=f"state-{v.name}",
                                                   class_="ok" if good_token else "bad"),
                              class_="small")),
            tags.td(f"{v.provider} / {v.flow}", class_="small"),
            tags.td(_dash(v.budget), id=f"budget-{v.name}", class_="small"),
            tags.td(_dash(v.credential_expires), id=f"credential-expiry-{v.name}",
                    class_="small " + ("bad" if v.credential_soon else
                                       "ok" if v.credential_expires else "muted")),
            tags.td(_when(v.token_expires), class_="small"),
            tags.td(folded(todo, 140), class_="small"),
            tags.td(action)))
    queue_rows = [tags.tr(tags.td(state), tags.td(str(count), id=f"count-{state}"))
                  for state, count in sorted(counts.items())]
    outcome_rows = [tags.tr(
        tags.td(_when(r.at), class_="small"), tags.td(entry_link(r.entry_id)),
        tags.td(address(r.sender)), tags.td(r.account),
        tags.td(r.outcome, id=f"outcome-{r.entry_id}",
                class_="ok" if r.outcome == "delivered" else "bad"),
        tags.td(folded(r.reply), class_="reply")) for r in reversed(list(recent))]
    return [
        tags.p(line, id="overall", class_="overall" + ("" if good else " bad")),
        tags.h2("Accounts"),
        _table(["p13", "p12", "p12", "p11", "p10", "p12", "p15", "p15"],
               ["Account", "State", "Provider / flow", "Budget left today",
                "Credential expires", "Token expires", "What to do", "Action"],
               rows, id="accounts"),
        tags.p("Listener TLS certificate expires: ", expiry_text(tls_expiry),
               id="tls-expiry", class_="small") if tls_expiry is not None else "",
        tags.h2("Queue"),
        tags.table(id="queue-counts", class_="counts")(
            tags.thead(tags.tr(tags.th("State", scope="col"),
                               tags.th("Messages", scope="col"))),
            tags.tbody(*queue_rows)),
        tags.p("Oldest waiting message: ",
               age_text(oldest_age) if oldest_age is not None else "none", id="oldest"),
        tags.h2("Recent deliveries and failures"),
        _table(["p13", "p16", "p17", "p9", "p9", "p36"],
               ["When", "Entry", "Sender", "Account", "Outcome", "Upstream reply"],
               outcome_rows, id="recent"),
    ]


def queue_body(entries: Iterable[Any], csrf: str, page: Any = None) -> list[Any]:
    """
    @param page: the L{xrelay.operations.queue.QueueSlice} the entries are: its counts
        per state (links that filter), and where the page is in the whole.
    """
    rows = []
    for e in entries:
        actions = []
        if e.state in ("queued", "deferred"):
            actions.append(_entry_form("/queue/retry", e.entry_id, "Retry",
                                       f"retry-{e.entry_id}", csrf))
            actions.append(_entry_form("/queue/bounce", e.entry_id, "Bounce",
                                       f"bounce-{e.entry_id}", csrf, danger=True))
        if e.state != "active":
            actions.append(_entry_form("/queue/delete", e.entry_id, "Delete",
                                       f"delete-{e.entry_id}", csrf, danger=True))
        recipients = list(e.recipients) or [r for r, _ in e.failed_recipients]
        rows.append(tags.tr(
            tags.td(entry_link(e.entry_id)),
            tags.td(tags.span(e.state, id=f"entry-state-{e.entry_id}",
                              class_="bad" if e.state in ("failed", "corrupt") else "muted"),
                    *([tags.br(), tags.span(f"next {_when(e.next_attempt)}",
                                            class_="small muted")]
                      if e.state == "deferred" else [])),
            tags.td(address(e.sender)),
            tags.td(addresses(recipients), id=f"entry-recipients-{e.entry_id}"),
            tags.td(str(e.attempts)),
            tags.td(folded(str(e.last_reply) if e.last_reply else
                           getattr(e, "problem", None)), class_="reply"),
            tags.td(*actions, class_="actions") if actions else tags.td("-")))
    return [
        tags.form(method="post", action="/queue/retry-all")(
            csrf_field(csrf), tags.button("Retry all now", type="submit", id="retry-all")),
        *(_queue_counts(page) if page is not None else [tags.p()]),
        _table(["p15", "p12", "p13", "p14", "p7", "p23", "p16"],
               ["Entry", "State / next attempt", "Sender", "Recipients", "Attempts",
                "Last reply", "Actions"], rows, id="queue"),
    ]


def _queue_counts(page: Any) -> list[Any]:
    """The counts per state (each a filter link) and the pager."""
    total = sum(page.counts.values())
    links: list[Any] = [tags.a(f"all {total:,}", href="/queue", id="filter-all")]
    for state, count in page.counts.items():
        links += [" · ", tags.a(f"{state} {count:,}", href=f"/queue?state={state}",
                                id=f"filter-{state}")]
    query = [("state", page.state)] if page.state else []
    if page.text:
        query.append(("q", page.text))
    here = f"?{urlencode(query)}&" if query else "?"
    first, last = page.offset + 1, page.offset + len(page.entries)
    pager: list[Any] = [tags.span(f"{first:,}–{last:,} of {page.total:,}" if page.total
                                  else "nothing here", id="queue-range")]
    if page.offset > 0:
        pager += [" ", tags.a("‹ previous", id="queue-previous",
                              href=f"/queue{here}offset={max(page.offset - page.size, 0)}")]
    if page.offset + page.size < page.total:
        pager += [" ", tags.a("next ›", id="queue-next",
                              href=f"/queue{here}offset={page.offset + page.size}")]
    search = tags.form(method="get", action="/queue", class_="inline")(
        *([tags.input(type="hidden", name="state", value=page.state)]
          if page.state else []),
        tags.input(type="search", name="q", value=page.text or "", id="queue-search",
                   placeholder="id, sender or recipient"),
        tags.button("Search", type="submit"))
    return [tags.p(*links, id="queue-counts", class_="small"),
            tags.p(search, " ", *pager, class_="small")]


def _entry_form(action: str, entry_id: str, label: str, button_id: str, csrf: str,
                danger: bool = False) -> Tag:
    return tags.form(method="post", action=action, class_="inline")(
        csrf_field(csrf), tags.input(type="hidden", name="id", value=entry_id),
        tags.button(label, type="submit", id=button_id,
                    class_="danger" if danger else ""))


def _search_form(values: dict[str, str]) -> Tag:
    def field(label: str, name: str, placeholder: str, size: int = 22) -> Tag:
        return tags.label(label, tags.input(type="text", name=name, id=f"search-{name}",
                                            value=values.get(name, ""), size=str(size),
                                            placeholder=placeholder))
    status = values.get("status", "")
    options = [tags.option(label, value=value, selected="selected")
               if value == status else tags.option(label, value=value)
               for value, label in (("", "any"), ("delivered", "delivered"),
                                    ("failed", "failed"), ("waiting", "waiting"))]
    return tags.form(method="get", action="/trace", class_="search", id="trace-search")(
        field("From", "from", "*@example.com"),
        field("To", "to", "someone@example.net"),
        field("Subject", "subject", "text in the subject"),
        field("Since", "since", "2h, 3d, a date", 14),
        field("Client", "client", "192.168.10.44", 14),
        tags.label("Status", tags.select(name="status", id="search-status")(*options)),
        tags.button("Search", type="submit", id="search"))


def trace_body(values: dict[str, str], messages: list[Any] | None,
               problem: str | None) -> list[Any]:
    """The Trace page: the search form, then the messages found, newest first."""
    body: list[Any] = [_search_form(values)]
    if problem:
        body.append(tags.p(problem, class_="bad", id="trace-problem"))
    if messages is None:
        return body
    rows = [tags.tr(
        tags.td(_when(m.received_at), class_="small"), tags.td(entry_link(m.entry_id)),
        tags.td(address(m.sender)), tags.td(addresses(m.recipients)),
        tags.td(_dash(m.subject)),
        tags.td(m.outcome, id=f"trace-outcome-{m.entry_id}",
                class_="ok" if m.outcome == "delivered" else
                ("" if m.outcome == "waiting" else "bad")),
        tags.td(folded(m.last_reply), class_="reply")) for m in messages]
    body += [tags.h2(f"{len(messages)} message{'s' if len(messages) != 1 else ''}",
                     id="trace-count"),
             _table(["p13", "p15", "p14", "p14", "p13", "p8", "p23"],
                    ["Received", "Entry", "Sender", "Recipients", "Subject", "Outcome",
                     "Last upstream reply"], rows, id="trace-results")]
    return body


def _attempts_table(attempts: Sequence[Any], table_id: str) -> Tag:
    rows = []
    for number, a in enumerate(attempts, 1):
        per_recipient = tags.ul(class_="plain")(*[
            tags.li(address(r), ": ", tags.span(o, class_="ok" if o == "delivered" else "bad"),
                    " ", tags.span(t, class_="reply")) for r, o, t in a.recipients]
        ) if a.recipients else "-"
        rows.append(tags.tr(tags.td(str(number)), tags.td(_when(a.at), class_="small"),
                            tags.td(_dash(a.account)), tags.td(a.outcome),
                            tags.td(per_recipient),
                            tags.td(_dash(a.upstream_id), class_="mono")))
    return _table(["p4", "p13", "p9", "p9", "p48", "p17"],
                  ["#", "When", "Account", "Outcome", "Recipients and replies",
                   "Upstream message id"], rows, id=table_id)


def entry_body(story: Any, entry_id: str, in_queue: str | None) -> list[Any]:
    """One message's story: how it came in, every attempt, the bounces sent."""
    if story is None:
        return [tags.p(f"The trace knows no message {entry_id} (older than the history "
                       "keeps, or a mistyped id).", id="entry-missing"),
                tags.p(tags.a("Search the trace", href="/trace"))]
    m = story.message
    facts: list[tuple[str, Any]] = [("Outcome", tags.span(m.outcome, id="entry-outcome",
                                   class_="ok" if m.outcome == "delivered" else
                                   ("" if m.outcome == "waiting" else "bad"))),
             ("Received", _when(m.received_at)),
             ("From client", f"{_dash(m.client)}" + (f" (user {m.user})" if m.user else "")),
             ("Sender", m.sender or "<>"),
             ("Recipients", ", ".join(m.recipients) or "-"),
             ("Subject", _dash(m.subject)), ("Message-ID", _dash(m.message_id)),
             ("Size", f"{m.size:,} bytes" if m.size is not None else "-"),
             ("Account", _dash(m.account)),
             ("Last upstream reply", tags.span(m.last_reply or "-", class_="reply",
                                               id="entry-last-reply")),
             ("Upstream message id", tags.span(
                 _dash(m.upstream_id), class_="mono")),
             ("Finished", _when(m.finished_at))]
    if m.bounce_of:
        facts.append(("Bounce of", entry_link(m.bounce_of)))
    if in_queue:
        facts.append(("In the queue", tags.a(in_queue, href="/queue")))
    body: list[Any] = [
        tags.dl(class_="facts", id="entry-facts")(
            *[item for label, value in facts for item in (tags.dt(label), tags.dd(value))]),
        tags.h2(f"Delivery attempts ({len(story.attempts)})"),
        _attempts_table(story.attempts, "entry-attempts") if story.attempts
        else tags.p("No delivery attempt yet.", class_="muted"),
    ]
    if story.bounces:
        body.append(tags.h2("Bounces sent"))
        rows = [tags.tr(tags.td(entry_link(b.entry_id)), tags.td(_when(b.received_at),
                                                                 class_="small"),
                        tags.td(addresses(b.recipients)), tags.td(b.outcome),
                        tags.td(folded(b.last_reply), class_="reply"))
                for b, _ in story.bounces]
        body.append(_table(["p17", "p13", "p24", "p9", "p37"],
                           ["Bounce", "Sent", "To", "Outcome", "Upstream reply"], rows,
                           id="entry-bounces"))
    return body


def message_body(text: str, link: str = "/", link_text: str = "Back") -> list[Any]:
    return [tags.p(text, id="message"), tags.p(tags.a(link_text, href=link, id="continue"))]
