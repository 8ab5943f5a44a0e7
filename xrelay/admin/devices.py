"""
The admin page's Devices page (C{/devices}): every device that talks to the relay at a
glance, failing ones first, with a one-line summary on top, a link to each device's
messages in the trace, and the fix for its last refusal; and the admit actions
("allow this address" or its network, "give it a password", the legacy TLS setting)
that write the managed configuration (L{xrelay.devices.admit}) and reload the relay.

The forms are POSTs that the site checks for the session's CSRF token like every
other (L{xrelay.admin.web}); each change is logged with who made it (the signed-in
admin and the address the page was used from).  The generated password is shown once,
in the answer to the POST, and is never logged or kept.  Markup is built with
C{twisted.web.template} tags, so every value is escaped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence
from urllib.parse import urlencode

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.template import Tag, tags

from xrelay.admin import pages
from xrelay.admin.http import AdminPages
from xrelay.devices import Device, InventoryMissing, devices_path, read_devices
from xrelay.devices.admit import (AdmitRefused, Admitted, allow_network, give_password,
                                  legacy_tls_listener, network_for)
from xrelay.devices.advice import (ADMIT_ADDRESS, ADMIT_PASSWORD, LEGACY_TLS, fix_for,
                                   reason_for, summary_line)
from xrelay.history.query import local_time

if TYPE_CHECKING:
    from xrelay.admin.sessions import Session

__all__ = ["DevicesPages", "devices_body", "row_id"]

log = Logger(namespace="xrelay.admin")

#: Devices shown in the table at most (failing ones first, then the most recent): the
#: page stays quick however many addresses a scan of the listener left behind.
MAX_ROWS = 300


def row_id(device: Device) -> str:
    """The element id of a device's row (C{device-127.0.0.3}, C{device-10.0.0.4-scanner})."""
    return "device-" + device.address + (f"-{device.user}" if device.user else "")


def _messages_link(device: Device) -> Tag:
    return tags.a("messages", href="/trace?" + urlencode({"client": device.address}),
                  id=f"trace-{row_id(device)}")


def _admit_forms(device: Device, csrf: str, actions: Sequence[str]) -> list[Any]:
    forms: list[Any] = []
    if ADMIT_ADDRESS in actions:
        network = network_for(device.address, "network")
        for scope, label in (("address", f"Allow {device.address}"),
                             ("network", f"Allow {network}")):
            forms.append(tags.form(method="post", action="/devices/allow")(
                pages.csrf_field(csrf),
                tags.input(type="hidden", name="address", value=device.address),
                tags.input(type="hidden", name="scope", value=scope),
                tags.button(label, type="submit", id=f"allow-{scope}-{row_id(device)}")))
    if ADMIT_PASSWORD in actions:
        forms.append(tags.form(method="post", action="/devices/password")(
            pages.csrf_field(csrf),
            tags.input(type="hidden", name="address", value=device.address),
            tags.input(type="hidden", name="user", value=device.user),
            tags.button("Give it a password", type="submit",
                        id=f"password-{row_id(device)}")))
    if LEGACY_TLS in actions:
        forms.append(tags.p(class_="small", id=f"legacy-tls-{row_id(device)}")(
            "Allow legacy TLS: add ", tags.span(legacy_tls_listener(), class_="mono"),
            " to [server] listen, restart xrelay, point the device at that port."))
    return forms


def _row(device: Device, csrf: str) -> Tag:
    refusal = device.last_refusal
    fix, actions = fix_for(device)
    who: list[Any] = [tags.strong(device.address)]
    if device.user:
        who += [" ", tags.span(f"user {device.user}", class_="mono")]
    who += [tags.br(), tags.span(", ".join(device.helo_names) or "no HELO",
                                 class_="small muted"),
            " · ", _messages_link(device)]
    login = (f"{device.mechanism or 'AUTH'} ok" if device.user else "none")
    if device.auth_failures:
        login += f"; {device.auth_failures} failed as {device.auth_failed_user or '?'}"
    tls = device.tls or ("handshake failed" if device.tls_failures else "-")
    if device.tls_failures and device.tls:
        tls += f"; {device.tls_failures} failed"
    counts = tags.span(class_="small")(
        f"{device.accepted} accepted", tags.br(), f"{device.delivered} delivered",
        tags.br(), f"{device.bounced} bounced", tags.br(), f"{device.refused} refused")
    last: list[Any] = ["-"]
    if refusal is not None:
        # A refusal the device has since got past is history: shown, but quietly.
        last = [tags.span(f"{local_time(refusal.at)}, {refusal.stage}", class_="small muted"),
                tags.br(), tags.span(pages.folded(refusal.reply, 90),
                                     class_="reply" if device.failing else "reply muted")]
    if fix:
        last += [tags.p(fix, class_="small", id=f"fix-{row_id(device)}"),
                 *_admit_forms(device, csrf, actions)]
    return tags.tr(id=row_id(device))(
        tags.td(tags.span(device.state, class_="bad" if device.failing else "ok",
                          id=f"state-{row_id(device)}"),
                tags.br() if device.failing else "",
                tags.span(reason_for(device), class_="small") if device.failing else ""),
        tags.td(*who), tags.td(tls), tags.td(login, class_="small"),
        tags.td(pages.addresses(device.senders), class_="small"),
        tags.td(counts), tags.td(local_time(device.last_seen), class_="small"),
        tags.td(*last, class_="actions-wrap"))


def _allow_any_form(csrf: str) -> Tag:
    return tags.form(method="post", action="/devices/allow", class_="search",
                     id="allow-any")(
        pages.csrf_field(csrf),
        tags.label("Allow an address or a private network",
                   tags.input(type="text", name="network", id="allow-network", size="24",
                              placeholder="192.168.10.44 or 192.168.10.0/24")),
        tags.button("Allow", type="submit", id="allow-submit"))


def devices_body(devices: list[Device] | None, csrf: str, problem: str | None = None
                 ) -> list[Any]:
    """The Devices page: the summary line, the table (failing first), the admit form."""
    if devices is None:
        return [tags.p(problem or "", class_="bad", id="devices-problem"),
                _allow_any_form(csrf)]
    failing = any(d.failing for d in devices)
    rows = [_row(d, csrf) for d in devices[:MAX_ROWS]]
    more = len(devices) - MAX_ROWS
    return [
        tags.p(summary_line(devices), class_="overall bad" if failing else "overall",
               id="devices-summary"),
        pages._table(["p11", "p14", "p8", "p9", "p13", "p9", "p8", "p28"],
                     ["State", "Device", "TLS", "Login", "Senders", "Messages",
                      "Last seen", "Last refusal and fix"], rows, id="devices"),
        tags.p(f"And {more} more seen less recently: `xrelay devices` lists them all.",
               class_="muted", id="devices-more") if more > 0 else "",
        tags.h2("Admit a device"),
        _allow_any_form(csrf),
    ]


def admitted_body(admitted: Admitted, reloaded: bool, device: str) -> list[Any]:
    """The answer to "give it a password": the password, shown this once."""
    body: list[Any] = [
        tags.p(f"{device} may now log in as user ", tags.strong(admitted.user or "",
                                                                id="new-user"),
               " with this password (shown only now; xrelay keeps only its hash):"),
        tags.p(tags.span(admitted.password or "", class_="mono", id="new-password")),
        tags.p("It may send as: ", pages.addresses(list(admitted.senders)), ". Set the "
               "user and password in the device's SMTP settings, with STARTTLS on.",
               class_="small"),
    ]
    if not reloaded:
        body.append(tags.p("Written, but the relay did not reload it: see its log.",
                           class_="bad"))
    body.append(tags.p(tags.a("Back to the devices", href="/devices", id="continue")))
    return body


def _client(request: Any) -> str:
    """The address the admin page was used from (for the change's log line)."""
    address = request.getClientAddress()
    return str(getattr(address, "host", address))


class DevicesPages:
    """The Devices page's routes, for L{xrelay.admin.web.AdminSite}."""

    def __init__(self, site: AdminPages) -> None:
        self.site = site

    @property
    def relay(self) -> Any:
        return self.site.relay

    async def _devices(self) -> list[Device]:
        from xrelay.history import history_path

        state_dir = self.site.config.server.state_dir
        if self.relay.devices is not None:
            await self.relay.devices.flush()
        reactor = self.site.reactor
        return await deferToThreadPool(reactor, reactor.getThreadPool(), read_devices,
                                       devices_path(state_dir), history_path(state_dir))

    async def page(self, request: Any, session: "Session") -> bytes:
        notice, session.notice = session.notice, None
        devices, problem = None, None
        if not self.site.config.relay.device_inventory:
            problem = "The device inventory is off (relay.device_inventory = false)."
        else:
            try:
                devices = await self._devices()
            except InventoryMissing as e:
                devices = [] if "no device inventory" in str(e) else None
                problem = str(e)
        return await self.site._html(pages.Page(
            "devices", devices_body(devices, session.csrf_token, problem),
            csrf=session.csrf_token, notice=notice, current="devices"))

    def _actor(self, request: Any) -> str:
        return f"the admin (admin page, from {_client(request)})"

    async def _reload(self) -> bool:
        """Reload the relay (on the reactor thread), so the change applies now."""
        return bool(self.relay.reload())

    async def allow(self, request: Any, session: "Session") -> None:
        """Join an address, its network, or a typed network to relay.allow_networks."""
        form = self.site._form
        address, typed = form(request, "address"), form(request, "network")
        try:
            network = (network_for(address, form(request, "scope") or "address")
                       if address else (typed or "").strip())
            if not network:
                raise AdmitRefused("give an address or a network")
            reactor = self.site.reactor
            admitted = await deferToThreadPool(
                reactor, reactor.getThreadPool(), allow_network, self.site.config, network,
                self._actor(request))
        except AdmitRefused as e:
            log.warn("admin: allowing {network} refused: {why} ({actor})",
                     network=address or typed, why=str(e), actor=self._actor(request))
            session.notice = f"Not allowed: {e}"
            return self.site._redirect(request, "/devices")
        reloaded = await self._reload()
        session.notice = (f"{network} may relay now ({admitted.what})." if reloaded else
                          f"{network} written, but the relay did not reload it: see its "
                          "log.")
        self.site._redirect(request, "/devices")

    async def password(self, request: Any, session: "Session") -> bytes | None:
        """Make a device user with a new password for the device, shown once."""
        address = self.site._form(request, "address") or ""
        user = self.site._form(request, "user") or ""
        try:
            found = [d for d in await self._devices() if d.key == (address, user)]
            if not found:
                raise AdmitRefused(f"the inventory knows no device {address}")
            reactor = self.site.reactor
            admitted = await deferToThreadPool(
                reactor, reactor.getThreadPool(), give_password, self.site.config,
                found[0], self._actor(request))
        except (AdmitRefused, InventoryMissing) as e:
            log.warn("admin: a password for {address} refused: {why} ({actor})",
                     address=address, why=str(e), actor=self._actor(request))
            session.notice = f"No password made: {e}"
            self.site._redirect(request, "/devices")
            return None
        reloaded = await self._reload()
        return await self.site._html(pages.Page(
            "a password for " + address, admitted_body(admitted, reloaded, address),
            csrf=session.csrf_token, current="devices"))
