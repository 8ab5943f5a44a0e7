"""
Certificate rotation for an account the setup made (C{xrelay setup rotate NAME}, and the
admin page's button): a new certificate is made on this host and added to the app
registration (Graph C{addKey}, proven with the current key), the relay switches to it
only once Entra ID hands out a token for it (the managed drop-in is rewritten and
reloaded), and the old certificate is then removed from the app (C{removeKey}, proven
with the new key).  Mail keeps flowing throughout: until the switch the old certificate
is in use and still valid; after it, the new one already works.

The old key and certificate files stay on disk (like every credential of a removed
account) until the admin deletes them.  Blocking; the page runs it in a thread.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import attrs

from xrelay.config import AccountConfig, Config
from xrelay.setup.credential import load_certificate, make_certificate, proof_of_possession
from xrelay.setup.graphapi import GraphAdminClient, GraphRefused
from xrelay.setup.plan import SetupRefused
from xrelay.setup.signin import AdminSession

__all__ = ["CertificateRotation", "rotatable"]


def rotatable(config: Config, name: str) -> AccountConfig:
    """The account, if the setup manages it and it signs in with a certificate."""
    try:
        account = config.account(name)
    except KeyError:
        names = ", ".join(a.name for a in config.accounts) or "none"
        raise SetupRefused(f"no account {name!r}; the accounts are: {names}") from None
    origin = config.origin("accounts", name)
    if origin is None or origin == config.path or "/managed/" not in origin:
        raise SetupRefused(f"account {name!r} is defined in {origin or 'the program'}, "
                           "not by xrelay's setup; rotate its certificate by hand "
                           "(`xrelay make-cert`, upload it in Entra, edit the file)")
    if not (account.certificate_file and account.certificate_key_file):
        raise SetupRefused(f"account {name!r} has no certificate to rotate (it uses "
                           f"{'a client secret' if account.client_secret_file else 'a sign-in'})")
    return account


@attrs.define
class CertificateRotation:
    config: Config
    account: AccountConfig
    say: Callable[[str], None]
    bundle: str
    current_config: Callable[[], Config]
    reload: Callable[[], bool | None] | None = None
    poll_interval: float = 10.0
    wait_timeout: float = 30 * 60.0
    sleep: Callable[[float], None] = time.sleep

    def run(self, admin: AdminSession) -> str:
        """Rotate; returns the new certificate file."""
        try:
            return self._run(admin)
        except GraphRefused as e:
            raise SetupRefused(e.text) from None
        finally:
            admin.forget()

    def _run(self, admin: AdminSession) -> str:
        from xrelay import managed
        from xrelay.setup.engine import _session

        account = self.account
        assert account.certificate_file and account.certificate_key_file
        graph = GraphAdminClient(self.config.setup.graph_url, _session(self.bundle),
                                 admin.graph_token)
        found = graph._call("GET", "applications?$filter=" + _quote(
            f"appId eq '{account.client_id}'"), "find the account's app registration")
        apps = found.get("value") or []
        if not apps:
            raise SetupRefused(f"the app registration {account.client_id} is gone from the "
                               "tenant; set the account up again with `xrelay setup "
                               "microsoft`")
        app: dict[str, Any] = apps[0]
        old = load_certificate(account.certificate_file, account.certificate_key_file)
        old_keys = [k for k in app.get("keyCredentials") or ()
                    if _thumbprint(k) == old.thumbprint]
        new = make_certificate(managed.credentials_dir(self.config.server.state_dir),
                               account.name, self.config.server.hostname)
        self.say(f"Made a new certificate on this host ({new.certificate_file}); adding it "
                 "to the app registration (the current one stays in use).")
        graph.add_key(app["id"], new.der, f"xrelay {account.name} "
                      f"{time.strftime('%Y-%m-%d')}", proof_of_possession(app["id"], old))
        self._wait_for_new(new.certificate_file, new.key_file)
        table = _table(account, self.current_config())
        table["certificate_file"] = new.certificate_file
        table["certificate_key_file"] = new.key_file
        change = managed.write_account(self.current_config(), table,
                                       actor=f"xrelay setup rotate ({admin.upn})",
                                       reload=self.reload)
        self.say(f"The relay now uses the new certificate ({change.path} rewritten"
                 + (", reloaded)." if change.reloaded else "; reload the relay)."))
        for key in old_keys:
            graph.remove_key(app["id"], str(key["keyId"]), proof_of_possession(app["id"], new))
        self.say(f"Removed the old certificate from the app registration "
                 f"({len(old_keys)} key); its files stay in place until you delete them: "
                 f"{old.certificate_file}, {old.key_file}.")
        return new.certificate_file

    def _wait_for_new(self, certificate_file: str, key_file: str) -> None:
        """Poll a token request with the new certificate until Entra ID accepts it."""
        from xrelay.tokens.microsoft import build_application, scopes_for

        import msal

        trial = attrs.evolve(self.account, certificate_file=certificate_file,
                             certificate_key_file=key_file)
        self.say(f"Waiting until Entra ID accepts the new certificate (polling every "
                 f"{self.poll_interval:g}s).")
        deadline = time.monotonic() + self.wait_timeout
        while True:
            app = build_application(trial, self.bundle, msal.SerializableTokenCache())
            assert isinstance(app, msal.ConfidentialClientApplication)
            result = app.acquire_token_for_client(scopes_for(trial))
            if result and "access_token" in result:
                self.say("Entra ID accepts the new certificate.")
                return
            if time.monotonic() > deadline:
                raise SetupRefused("Entra ID did not accept the new certificate in time; "
                                   "the old one stays in use; run the rotation again later")
            self.sleep(self.poll_interval)


def _table(account: AccountConfig, config: Config) -> dict[str, Any]:
    """The account's managed table as written (read back from its drop-in)."""
    import tomllib

    path = config.origin("accounts", account.name)
    assert path is not None
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    return dict(raw["accounts"][0])


def _thumbprint(key: dict[str, Any]) -> bytes:
    import base64

    try:
        return base64.b64decode(str(key.get("customKeyIdentifier") or ""))
    except ValueError:
        return b""


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text)
