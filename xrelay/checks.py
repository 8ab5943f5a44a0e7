"""
What would fail later, found before anything listens: checks of the machine around a
valid configuration (the state folder, file modes, certificate lifetime) and settings
that are allowed but probably wrong (shadowed senders, senders nobody routes, an admin
page open to the network in clear).

C{xrelay check-config} prints them; the daemon logs the warnings and refuses to start on
a problem (L{problems}), with the same lines.  Pure reads: nothing here changes a file.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Iterable

from xrelay.addresses import SenderPattern
from xrelay.config import Config
from xrelay.parents import parent_folder_problems

__all__ = ["problems", "warnings"]

#: The address a pattern stands for when comparing patterns (no real mailbox has it).
_PROBE = "xrelay-probe-7f3a"


def problems(config: Config) -> list[str]:
    """
    Reasons the relay must not start, one line each (name the setting, say the fix).
    Empty when all is well.
    """
    where = config.path or "sandbox default"
    found = []
    problem = _state_dir_problem(config.server.state_dir)
    if problem:
        found.append(f"{where}: server.state_dir: {problem}")
    found.extend(f"{where}: server.state_dir: {line}"
                 for line in parent_folder_problems(config.server.state_dir))
    return found


def _user(uid: int) -> str:
    """A user's name for a fix an operator types (the uid when it has none)."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _subfolder_problem(path: str, me: int) -> str | None:
    """
    Every folder under the state folder must be the relay's and writable (a spool
    restored from a backup as root passed the check and stopped the daemon with a
    PermissionError): one line for all, with the fix.
    """
    wrong: list[str] = []
    pending = [path]
    while pending and len(wrong) < 100:
        try:
            with os.scandir(pending.pop()) as found:
                for item in found:
                    if not item.is_dir(follow_symlinks=False):
                        continue
                    pending.append(item.path)
                    st = item.stat(follow_symlinks=False)
                    if st.st_uid != me or not os.access(item.path, os.W_OK | os.X_OK):
                        wrong.append(item.path)
        except OSError as e:
            return f"a folder under {path} cannot be read ({e.strerror}); chown -R " \
                   f"{_user(me)} {path}"
    if not wrong:
        return None
    first = wrong[0]
    try:
        owner = _user(os.stat(first).st_uid)
    except OSError:
        owner = "?"
    more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
    return (f"{first}{more} is owned by {owner} or not writable, but xrelay runs as "
            f"{_user(me)}: chown -R {_user(me)} {path}")


def _state_dir_problem(path: str) -> str | None:
    """The state folder must exist or be creatable, be writable, be ours, be private;
    so must every folder in it."""
    me = os.geteuid()
    problem = _state_dir_itself(path, me)
    if problem is None and os.path.isdir(path):
        problem = _subfolder_problem(path, me)
    return problem


def _state_dir_itself(path: str, me: int) -> str | None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.access(parent, os.W_OK | os.X_OK):
            return (f"{path} does not exist and cannot be created ({parent} is not "
                    f"writable by {_user(me)}); create it owned by the user xrelay runs "
                    "as, mode 0700")
        return None
    except OSError as e:
        return f"{path} cannot be examined ({e.strerror}); fix its permissions"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a folder; point state_dir at a folder"
    if st.st_uid != me:
        return (f"{path} is owned by {_user(st.st_uid)}, but xrelay runs as {_user(me)}: "
                f"another user could move the spool; chown -R {_user(me)} {path} (run "
                "check-config as the relay's user, e.g. sudo -u xrelay)")
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (f"{path} is writable by group or others (mode {mode:04o}): another local "
                f"user could move or plant spool files; chmod 700 {path}")
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable by {_user(me)}; chmod u+rwx {path}"
    return None


def warnings(config: Config) -> list[str]:
    """Everything L{Config.warnings} says, and what the machine around it shows."""
    where = config.path or "sandbox default"
    found = list(config.warnings())
    found += _credential_expiry(config)
    found += _secret_modes(config, where)
    found += _shadowed_senders(config, where)
    found += _unrouted_users(config, where)
    found += _admin_in_clear(config, where)
    return found


def _credential_expiry(config: Config) -> list[str]:
    """Certificates (the listeners', the accounts') and client secrets ending soon."""
    import time

    from xrelay.tokens.expiry import credential_expiries, expiry_warnings

    return expiry_warnings(credential_expiries(config), time.time())


def _secret_modes(config: Config, where: str) -> list[str]:
    files = [("server.tls_key", config.server.tls_key)]
    for account in config.accounts:
        for key in ("client_secret_file", "certificate_key_file", "refresh_token_file"):
            files.append((f'accounts."{account.name}".{key}', getattr(account, key)))
    found = []
    mine = set(os.getgroups()) | {os.getegid()}
    for key, path in files:
        if not path:
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue
        mode = stat.S_IMODE(st.st_mode)
        if not mode & (stat.S_IRGRP | stat.S_IROTH):
            continue
        # The recommended root:xrelay 0640 (README, install.sh): root owns it, the
        # relay's group may read it, nobody else.
        if not mode & (stat.S_IROTH | stat.S_IWGRP | stat.S_IWOTH) and st.st_uid in (
                0, os.geteuid()) and (st.st_gid in mine or _group(st.st_gid) == "xrelay"):
            continue
        if mode & stat.S_IROTH:
            who = "others"
        else:
            who = f"the group {_group(st.st_gid)}"
        group = "xrelay" if os.geteuid() == 0 else _group(os.getegid())
        found.append(f"{where}: {key}: {path} is readable by {who} (mode {mode:04o}); "
                     f"chown root:{group} {path} && chmod 640 {path}")
    return found


def _sample(pattern: SenderPattern) -> str:
    """One address the pattern matches, chosen not to be matched by accident."""
    text = pattern.text if pattern.text != "*" else "*@*"
    local, _, domain = text.rpartition("@")
    local = re.sub(r"[*?]", _PROBE, local) or _PROBE
    domain = re.sub(r"[*?]", _PROBE, domain) + (".invalid" if "*" in domain else "")
    return f"{local}@{domain}"


def _covers(wide: SenderPattern, narrow: SenderPattern) -> bool:
    return wide.matches(_sample(narrow))


def _overlap(a: SenderPattern, b: SenderPattern) -> bool:
    return a.matches(_sample(b)) or b.matches(_sample(a))


def _shadowed_senders(config: Config, where: str) -> list[str]:
    """An account's sender pattern that an earlier account always takes first."""
    found = []
    for i, account in enumerate(config.accounts):
        for pattern in account.senders:
            for earlier in config.accounts[:i]:
                wide = next((p for p in earlier.senders if _covers(p, pattern)), None)
                if wide is not None:
                    found.append(
                        f'{where}: accounts."{account.name}".senders: "{pattern.text}" is '
                        f'never used: account "{earlier.name}" comes first and takes it '
                        f'("{wide.text}"); put "{account.name}" first or narrow '
                        f'"{earlier.name}"\'s senders')
                    break
    return found


def _routes(config: Config) -> Iterable[SenderPattern]:
    for account in config.accounts:
        yield from account.senders


def _unrouted_users(config: Config, where: str) -> list[str]:
    """A user's sender that no account would carry: its mail is refused at MAIL."""
    if config.relay.default_account is not None:
        return []
    found = []
    for user in config.users:
        for pattern in user.senders:
            if not any(_overlap(pattern, route) for route in _routes(config)):
                found.append(
                    f'{where}: users."{user.name}".senders: no account routes '
                    f'"{pattern.text}": its mail would be refused at MAIL FROM; add it to '
                    "an account's senders or set relay.default_account")
    return found




def _admin_in_clear(config: Config, where: str) -> list[str]:
    if config.admin is None:
        return []
    from xrelay.config import plain_http_off_loopback

    listen = config.admin.listen
    if not plain_http_off_loopback(config.admin):
        return []
    return [f'{where}: admin.listen: "{listen}" is reachable from the network without '
            "TLS: the admin password and session cookie would cross it in clear; listen "
            'on 127.0.0.1 (behind a TLS proxy) or use an "ssl:" endpoint']
