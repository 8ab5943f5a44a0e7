"""
The reader of xrelay's TOML: one validated L{Config} from one file's table, every
mistake a L{ConfigError} naming the dotted key and the file.

Below the loader (L{xrelay.configfile}: which file, and the drop-ins merged after it)
and the drop-ins (L{xrelay.dropins}), which both read through it.  It reads; it must
never write a file or decide which file to read.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import tomllib
from typing import Any, Callable, Iterable, TypeVar

import attrs

from xrelay.addresses import InvalidPattern, SenderPattern
from xrelay.config import (
    DEFAULT_PROVIDER,
    NOT_A_PASSWORD_HASH,
    AccountConfig,
    AdminConfig,
    Config,
    ConfigError,
    DeliveryConfig,
    InvalidValue,
    ListenerConfig,
    Network,
    RelayConfig,
    ServerConfig,
    SetupConfig,
    UserConfig,
)

#: Where the configuration is looked for when neither C{--config} nor
#: C{$XRELAY_CONFIG} names one.
T = TypeVar("T")
V = TypeVar("V")


def read_main_config(path: str) -> Config:
    """
    Read and validate the admin's own file alone; it may leave the accounts to the
    drop-ins (L{xrelay.managed.with_dropins} merges them); its C{relay.default_account}
    must name an account of the file itself.
    """
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(
            path, "", "no such file; pass --config FILE or set XRELAY_CONFIG"
        ) from None
    except PermissionError:
        raise ConfigError(
            path, "", "cannot read the file (permission denied); make it readable by "
            "the user xrelay runs as"
        ) from None
    except IsADirectoryError:
        raise ConfigError(path, "", "is a folder; name the xrelay.toml file in it") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "", "not valid TOML: the file is not UTF-8") from None
    return _Reader(path).config(raw, require_accounts=False)


# ---------------------------------------------------------------------------
# Reading.  One small reader per section; every check raises ConfigError naming the
# dotted key (accounts."main".tenant) so the message points at the line to fix.  The
# rules about values are the classes' validators: L{_Reader.build} names their key.

#: The attrs field types the reader takes straight from TOML, with the TOML type.
_SCALARS: dict[str, type] = {"int": int, "bool": bool, "str": str, "str | None": str,
                             "bool | None": bool}

#: The fields the reader reads itself (lists, files, paths), by section: every other
#: field must have a type in L{_SCALARS}, or the reader would not read it.
READ_APART = {
    ServerConfig: {"listen", "hostname", "state_dir", "tls_cert", "tls_key",
                   "trusted_proxies"},
    RelayConfig: {"allow_networks", "senders"},
    AdminConfig: {"monitoring_networks"},
    SetupConfig: {"ca_file"},
    UserConfig: {"senders"},
    AccountConfig: {"senders", "client_secret_file", "certificate_file",
                    "certificate_key_file", "refresh_token_file", "ca_file",
                    "client_secret_expires"},
}


def type_name(field: attrs.Attribute[Any]) -> str:
    """A field's type as written in the class (C{"str | None"})."""
    kind = field.type
    return kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))


#: The file keys of an account, and whether the file holds a secret (must not be empty).
_ACCOUNT_FILES = {"client_secret_file": True, "certificate_file": False,
                  "certificate_key_file": True, "refresh_token_file": True,
                  "ca_file": False}


@attrs.define
class _Reader:
    path: str

    @property
    def base(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.path, key, problem)

    def build(self, prefix: str, make: Callable[..., V], keys: dict[str, str] | None = None,
              **values: Any) -> V:
        """
        Build one value from what the file wrote: a rule it breaks (L{InvalidValue})
        becomes the L{ConfigError} naming the key, C{prefix.field} unless C{keys} names
        it otherwise.
        """
        try:
            return make(**values)
        except InvalidValue as e:
            key = (keys or {}).get(e.field) or (f"{prefix}.{e.field}" if prefix else e.field)
            raise self.fail(key, e.problem) from None

    # -- generic checks -----------------------------------------------------


    def table(self, raw: Any, key: str) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.fail(key, f"must be a table ([{key}]), not {_kind(raw)}")
        return raw

    def known_keys(self, raw: dict[str, Any], prefix: str, allowed: Iterable[str],
                   hints: dict[str, str] | None = None) -> None:
        allowed = list(allowed)
        for key in raw:
            if key in allowed:
                continue
            name = f"{prefix}.{key}" if prefix else key
            if hints and key in hints:
                raise self.fail(name, hints[key])
            close = difflib.get_close_matches(key, allowed, n=1)
            suggestion = f'; did you mean "{close[0]}"?' if close else (
                f"; the keys here are: {', '.join(allowed)}"
            )
            raise self.fail(name, f"unknown key{suggestion}")

    def get(self, raw: dict[str, Any], key: str, name: str, kind: type[T],
            default: T | None = None, required: bool = False) -> T | None:
        if key not in raw:
            if required:
                raise self.fail(name, f"is required; add {key} = {_example(kind)}")
            return default
        value = raw[key]
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            raise self.fail(
                name, f"must be {_kind_name(kind)}, not {_kind(value)}; "
                f"write {key} = {_example(kind)}"
            )
        return value


    def scalars(self, raw: dict[str, Any], prefix: str, schema: type,
                skip: Iterable[str] = ()) -> dict[str, Any]:
        """
        The keys of C{schema} with a plain TOML type (numbers, booleans, strings) that
        the file writes, type-checked; keys it leaves out keep the class's default.
        """
        skip = set(skip)
        values: dict[str, Any] = {}
        for field in attrs.fields(schema):
            kind = _SCALARS.get(type_name(field))
            if kind is not None and field.name in raw and field.name not in skip:
                values[field.name] = self.get(raw, field.name, f"{prefix}.{field.name}",
                                              kind)
        return values


    def string_list(self, raw: dict[str, Any], key: str, name: str) -> list[str] | None:
        if key not in raw:
            return None
        value = raw[key]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(name, f'must be a list of strings, e.g. {key} = ["..."]')
        return value

    def file(self, raw: dict[str, Any], key: str, name: str, secret: bool = False,
             required: bool = False) -> str | None:
        value = self.get(raw, key, name, str, None, required)
        if value is None:
            return None
        full = os.path.join(self.base, os.path.expanduser(value))
        try:
            with open(full, "rb") as f:
                if secret and not f.read().strip():
                    raise self.fail(name, f"{full} is empty; put the secret in it")
        except FileNotFoundError:
            raise self.fail(name, f"{full} does not exist; create it or fix the path "
                            "(relative paths start at the configuration file's folder)"
                            ) from None
        except PermissionError:
            raise self.fail(name, f"{full} is not readable by this user; "
                            f"chmod/chown it so xrelay can read it") from None
        except IsADirectoryError:
            raise self.fail(name, f"{full} is a folder; name a file") from None
        return full

    def patterns(self, raw: dict[str, Any], key: str, name: str
                 ) -> tuple[SenderPattern, ...] | None:
        texts = self.string_list(raw, key, name)
        if texts is None:
            return None
        result = []
        for i, text in enumerate(texts):
            try:
                result.append(SenderPattern.parse(text))
            except InvalidPattern as e:
                raise self.fail(f"{name}[{i}]", str(e)) from None
        return tuple(result)


    def hash(self, raw: dict[str, Any], name: str) -> None:
        """A required C{password_hash}: never empty in a file (the class allows C{""})."""
        if not self.get(raw, "password_hash", name, str, required=True):
            raise self.fail(name, NOT_A_PASSWORD_HASH)

    # -- sections -------------------------------------------------------------

    def config(self, raw: dict[str, Any], require_accounts: bool = True) -> Config:
        self.known_keys(raw, "", ["server", "relay", "users", "accounts", "delivery",
                                  "admin", "setup"])
        server = self.server(self.table(raw.get("server", {}), "server"))
        relay = self.relay(self.table(raw.get("relay", {}), "relay"))
        users = self.users(raw.get("users", []))
        accounts = self.accounts(raw.get("accounts", []))
        delivery = self.delivery(self.table(raw.get("delivery", {}), "delivery"))
        admin = self.admin(self.table(raw["admin"], "admin")) if "admin" in raw else None
        setup = self.setup(self.table(raw.get("setup", {}), "setup"))
        config = self.build("", Config, server=server, relay=relay, users=users,
                            accounts=accounts, delivery=delivery, admin=admin, setup=setup,
                            path=os.path.abspath(self.path))
        if not accounts and require_accounts:
            raise self.fail("accounts", "no [[accounts]] table; add one upstream mailbox "
                            "(see the README) so that xrelay can deliver")
        return config

    def server(self, raw: dict[str, Any]) -> ServerConfig:
        keys = [f.name for f in attrs.fields(ServerConfig)]
        self.known_keys(raw, "server", keys)
        values = self.scalars(raw, "server", ServerConfig,
                              skip=("hostname", "state_dir", "tls_cert", "tls_key"))
        if "listen" in raw:
            values["listen"] = tuple(self.listeners(raw))
        # No hostname (or ""): the class's default, getfqdn() (a DNS lookup, slow where
        # DNS is broken), is only asked for when the file names none.
        hostname = self.get(raw, "hostname", "server.hostname", str)
        if hostname:
            values["hostname"] = hostname
        state_dir = self.get(raw, "state_dir", "server.state_dir", str)
        if state_dir is not None:
            values["state_dir"] = os.path.join(self.base, os.path.expanduser(state_dir))
        tls_cert = self.file(raw, "tls_cert", "server.tls_cert")
        tls_key = self.file(raw, "tls_key", "server.tls_key", secret=True)
        if tls_cert is not None and tls_key is not None:
            self.check_tls_pair(tls_cert, tls_key)
        proxies = self.networks(raw, "trusted_proxies", "server.trusted_proxies")
        if proxies is not None:
            values["trusted_proxies"] = proxies
        server = self.build("server", ServerConfig, tls_cert=tls_cert, tls_key=tls_key,
                            **values)
        # Only when written: the default is halved for a small max_connections.
        if ("reserved_connections" in raw
                and server.reserved_connections >= server.max_connections):
            raise self.fail("server.reserved_connections", f"must be less than "
                            f"server.max_connections ({server.max_connections}), or "
                            "nobody outside relay.allow_networks could connect")
        return server

    def networks(self, raw: dict[str, Any], key: str, name: str,
                 example: str = '"10.0.0.5/32"') -> tuple[Network, ...] | None:
        """CIDR networks as written (C{None}: not written); the classes judge them."""
        texts = self.string_list(raw, key, name)
        if texts is None:
            return None
        parsed = []
        for i, text in enumerate(texts):
            try:
                parsed.append(ipaddress.ip_network(text, strict=True))
            except ValueError as e:
                raise self.fail(
                    f"{name}[{i}]", f"{text!r} is not a network in CIDR form ({e}); write "
                    f'e.g. {example} or "2001:db8::/64"') from None
        return tuple(parsed)

    def listeners(self, raw: dict[str, Any]) -> list[ListenerConfig]:
        value = raw["listen"]
        if isinstance(value, (str, dict)):
            value = [value]
        if not isinstance(value, list) or not value:
            raise self.fail("server.listen", 'must be a list of at least one endpoint '
                            'description, e.g. listen = ["tcp:25"]')
        listeners = []
        for i, item in enumerate(value):
            name = f"server.listen[{i}]"
            if isinstance(item, str):
                item = {"endpoint": item}
            if not isinstance(item, dict):
                raise self.fail(name, "must be an endpoint description string or a table "
                                '{ endpoint = "tcp:465", implicit_tls = true }')
            self.known_keys(item, name, ["endpoint", "implicit_tls", "pass_through",
                                         "starttls", "tls_min_version",
                                         "auth_without_tls", "bare_lf_end_of_data"])
            self.get(item, "endpoint", f"{name}.endpoint", str, required=True)
            listeners.append(self.build(name, ListenerConfig, keys={"endpoint": name},
                                        **self.scalars(item, name, ListenerConfig)))
        return listeners


    def check_tls_pair(self, cert: str, key: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        from cryptography.hazmat.primitives.serialization import (Encoding,
                                                                  PublicFormat)

        try:
            with open(cert, "rb") as f:
                leaf = x509.load_pem_x509_certificates(f.read())[0]
        except ValueError:
            raise self.fail("server.tls_cert", f"{cert} holds no PEM certificate") from None
        try:
            with open(key, "rb") as f:
                private = load_pem_private_key(f.read(), password=None)
        except (ValueError, TypeError):
            raise self.fail("server.tls_key", f"{key} holds no unencrypted PEM private "
                            "key") from None

        def spki(public: Any) -> bytes:
            return bytes(public.public_bytes(Encoding.DER,
                                             PublicFormat.SubjectPublicKeyInfo))
        if spki(leaf.public_key()) != spki(private.public_key()):
            raise self.fail("server.tls_key", f"{key} does not belong to the certificate "
                            f"in {cert} (their public keys differ); use the key the "
                            "certificate was issued for (the first certificate in "
                            "tls_cert must be the server's own)")
        import datetime

        expires = leaf.not_valid_after_utc
        if expires <= datetime.datetime.now(datetime.timezone.utc):
            raise self.fail("server.tls_cert", f"{cert} expired on "
                            f"{expires:%Y-%m-%d %H:%M} UTC; renew it (clients refuse an "
                            "expired certificate at STARTTLS)")


    def relay(self, raw: dict[str, Any]) -> RelayConfig:
        self.known_keys(raw, "relay", ["allow_networks", "senders", "default_account",
                                       "bare_lf_end_of_data", "allow_public_networks",
                                       "device_inventory"])
        values = self.scalars(raw, "relay", RelayConfig)
        networks = self.networks(raw, "allow_networks", "relay.allow_networks",
                                 '"192.168.10.0/24"')
        if networks is not None:
            values["allow_networks"] = networks
        senders = self.patterns(raw, "senders", "relay.senders")
        if senders:
            values["senders"] = senders
        return self.build("relay", RelayConfig, **values)


    def array_of_tables(self, raw: Any, key: str) -> list[dict[str, Any]]:
        if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
            raise self.fail(key, f"must be written as [[{key}]] tables")
        return raw


    def users(self, raw: Any) -> tuple[UserConfig, ...]:
        users = []
        seen: set[str] = set()
        for i, table in enumerate(self.array_of_tables(raw, "users")):
            prefix = f"users[{i}]"
            self.known_keys(table, prefix, ["name", "password_hash", "senders"], hints={
                "password": "plaintext passwords are not accepted; run `xrelay "
                "hash-password` and write password_hash = \"<its output>\" instead"})
            name = self.get(table, "name", f"{prefix}.name", str, required=True)
            assert name is not None
            if name in seen:
                raise self.fail(f"{prefix}.name", f"user {name!r} is defined twice")
            seen.add(name)
            prefix = f'users."{name}"'
            self.hash(table, f"{prefix}.password_hash")
            values = self.scalars(table, prefix, UserConfig)
            senders = self.patterns(table, "senders", f"{prefix}.senders")
            if senders:
                values["senders"] = senders
            users.append(self.build(prefix, UserConfig, **values))
        return tuple(users)

    def accounts(self, raw: Any) -> tuple[AccountConfig, ...]:
        accounts = []
        seen: set[str] = set()
        for i, table in enumerate(self.array_of_tables(raw, "accounts")):
            name = self.get(table, "name", f"accounts[{i}].name", str, required=True)
            assert name is not None
            if name in seen:
                raise self.fail(f"accounts[{i}].name", f"account {name!r} is defined twice")
            seen.add(name)
            accounts.append(self.account(table, name))
        return tuple(accounts)

    def account(self, raw: dict[str, Any], name: str) -> AccountConfig:
        """
        One account as written.  Keys left out are not passed: the provider-dependent
        defaults come from L{xrelay.config.account_defaults} through the class.
        """
        prefix = f'accounts."{name}"'
        keys = [f.name for f in attrs.fields(AccountConfig)]
        self.known_keys(raw, prefix, keys, hints={
            "client_secret": "secrets do not go in the configuration file; put the "
            "secret in a file readable only by xrelay and write "
            "client_secret_file = \"secret.txt\"",
            "refresh_token": "write the refresh token into a file and set "
            "refresh_token_file = \"...\"",
            "password": "Exchange Online and Gmail need OAuth 2.0, not a password; choose "
            "a flow (client_credentials, device_code, auth_code, refresh_token)"})
        k = lambda key: f"{prefix}.{key}"  # noqa: E731
        self.get(raw, "user", k("user"), str, required=True)
        values = self.scalars(raw, prefix, AccountConfig,
                              skip=[*_ACCOUNT_FILES, "client_secret_expires"])
        values["name"] = name
        values.setdefault("provider", DEFAULT_PROVIDER)
        senders = self.patterns(raw, "senders", k("senders"))
        if senders is not None:
            values["senders"] = senders
        for key, secret in _ACCOUNT_FILES.items():
            values[key] = self.file(raw, key, k(key), secret=secret)
        for key in ("authority", "graph_url", "authorization_url"):
            url = values.get(key)
            if isinstance(url, str) and url.startswith("https://"):
                values[key] = url.rstrip("/")
        if "client_secret_expires" in raw:
            values["client_secret_expires"] = self.expiry_date(raw["client_secret_expires"])
        return self.build(prefix, AccountConfig, **values)

    @staticmethod
    def expiry_date(value: Any) -> Any:
        """A bare TOML date as the class's "YYYY-MM-DD" text; the class judges the rest."""
        import datetime

        if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
            return value.isoformat()
        return value

    def delivery(self, raw: dict[str, Any]) -> DeliveryConfig:
        self.known_keys(raw, "delivery", [f.name for f in attrs.fields(DeliveryConfig)])
        return self.build("delivery", DeliveryConfig,
                          **self.scalars(raw, "delivery", DeliveryConfig))

    def admin(self, raw: dict[str, Any]) -> AdminConfig:
        self.known_keys(raw, "admin", ["listen", "password_hash", "public_url",
                                       "monitoring_networks"], hints={
            "password": "plaintext passwords are not accepted; run `xrelay hash-password`"
            " and write password_hash = \"<its output>\" instead"})
        self.hash(raw, "admin.password_hash")
        values = self.scalars(raw, "admin", AdminConfig)
        monitoring = self.networks(raw, "monitoring_networks", "admin.monitoring_networks",
                                   '"127.0.0.1/32"')
        if monitoring is not None:
            values["monitoring_networks"] = monitoring
        if values.get("public_url"):
            values["public_url"] = values["public_url"].rstrip("/")
        return self.build("admin", AdminConfig, **values)

    def setup(self, raw: dict[str, Any]) -> SetupConfig:
        self.known_keys(raw, "setup", [f.name for f in attrs.fields(SetupConfig)])
        values = self.scalars(raw, "setup", SetupConfig, skip=["ca_file"])
        for key in ("authority", "graph_url", "exchange_admin_url"):
            if isinstance(values.get(key), str):
                values[key] = values[key].rstrip("/")
        values["ca_file"] = self.file(raw, "ca_file", "setup.ca_file")
        return self.build("setup", SetupConfig, **values)


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _kind_name(kind: type) -> str:
    return {bool: "true or false", int: "a whole number", str: "a string",
            list: "a list", dict: "a table"}.get(kind, kind.__name__)


def _example(kind: type) -> str:
    return {bool: "true", int: "30", str: '"..."', list: '["..."]'}.get(kind, "...")


def account_from_table(table: dict[str, Any], source: str) -> AccountConfig:
    """
    Validate one C{[[accounts]]} table that did not come from a file (the embedded
    sandbox's account, an embedding program's).  Paths must be absolute.

    @param source: what to name in error messages in place of a file.
    """
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(source, "accounts.name", "is required")
    return _Reader(source).account(table, name)


