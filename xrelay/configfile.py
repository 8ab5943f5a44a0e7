"""
Which configuration file to read, and the whole configuration: the admin's file read by
L{xrelay.configreader}, then the managed drop-ins merged after it (L{xrelay.dropins}).

The TOML reader (L{xrelay.configreader}): C{xrelay.toml} read with C{tomllib} into the values of L{xrelay.config}.

Every mistake is found here, before anything listens, and reported as one
L{ConfigError} that names the file, the key and what to write instead: people install
xrelay in a hurry and must be able to fix their file from one line of output.  The
reader checks what only a file can get wrong (unknown keys, TOML types, required keys)
and what touches the file system (secret files exist and are readable, the certificate
and its key belong together and have not expired); every rule about the values
themselves is a validator of the attrs classes in L{xrelay.config}, whose
L{InvalidValue} the reader turns into a L{ConfigError} naming the dotted key.  Keys a
file leaves out are not passed at all, so the classes' defaults (and the
provider-dependent ones of L{account_defaults}) are the only defaults.  Relative paths
are resolved against the folder of the configuration file.  Secret files are checked
for readability here, but their contents are never kept on the values nor shown in any
message.

This module must not import the reactor or C{twisted.mail}: the twistd plugin and the
C{xrelay} command load configurations before a reactor is chosen.
"""

from __future__ import annotations

import os

from xrelay.config import Config, sandbox_default
from xrelay.configreader import account_from_table, read_main_config
from xrelay.dropins import read_dropins, with_dropins

__all__ = ["DEFAULT_CONFIG_PATH", "ENVIRONMENT_VARIABLE", "account_from_table",
           "find_config_path", "load_config", "main_config", "read_config",
           "read_main_config"]

#: Where the configuration is looked for when neither C{--config} nor
#: C{$XRELAY_CONFIG} names one.
DEFAULT_CONFIG_PATH = "/etc/xrelay/xrelay.toml"
ENVIRONMENT_VARIABLE = "XRELAY_CONFIG"



def find_config_path(explicit: str | None) -> tuple[str | None, bool]:
    """
    Which configuration file to use: C{--config}, else C{$XRELAY_CONFIG}, else
    L{DEFAULT_CONFIG_PATH}.

    @return: the path (or C{None}: use the sandbox default) and whether it was named
        explicitly (a named file that does not exist is an error; the default path that
        does not exist means "sandbox").
    """
    if explicit:
        return explicit, True
    env = os.environ.get(ENVIRONMENT_VARIABLE)
    if env:
        return env, True
    if os.path.exists(DEFAULT_CONFIG_PATH):
        return DEFAULT_CONFIG_PATH, True
    return None, False

def load_config(explicit: str | None = None) -> Config:
    """
    Find and load the configuration as DESIGN.md says, or the sandbox default.

    @raise ConfigError: for any mistake, including a named file that does not exist.
    """
    path, named = find_config_path(explicit)
    if path is None:
        from xrelay.sandboxdefault import sandbox_with_dropins

        return sandbox_with_dropins()
    return read_config(path)


def read_config(path: str) -> Config:
    """
    Read and validate one configuration file, then the managed drop-ins under its
    C{state_dir} (L{xrelay.managed}), merged by L{xrelay.managed.with_dropins}.

    @raise ConfigError: for the first mistake found.
    """
    main = read_main_config(path)
    return with_dropins(main, read_dropins(main.server.state_dir))


def main_config(config: Config) -> Config:
    """
    The admin's own configuration under C{config}, without the drop-ins: re-read from
    its file (the sandbox default when it has none).
    """
    if config.path is None:
        return sandbox_default(config.sandbox_dir)
    return read_main_config(config.path)
