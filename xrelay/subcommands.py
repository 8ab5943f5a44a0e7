"""
How a module adds a subcommand to the C{xrelay} command, and the exit statuses every
subcommand uses.

The registry sits below the operator modules that fill it (L{xrelay.operations},
L{xrelay.foreground}) and L{xrelay.cli}, which builds the parser from it on top of them
all: the layers point one way.  This module must not import an operator module.
"""

from __future__ import annotations

import argparse
from typing import Callable

from xrelay.config import Config
from xrelay.configfile import load_config

__all__ = ["EXIT_OK", "EXIT_PROBLEM", "EXIT_USAGE", "Command", "command", "config_from",
           "origin_of", "registered"]

#: 0 success, 1 a problem the message names (configuration, sign-in, queue), 2 a usage
#: mistake.
EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2

Command = Callable[[argparse.Namespace], int]
#: Registered subcommands: name -> (help, function to add arguments, function to run).
_commands: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Command]] = {}


def command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None]
            = lambda p: None) -> Callable[[Command], Command]:
    """Register a subcommand; other modules add theirs the same way."""

    def register(run: Command) -> Command:
        _commands[name] = (help, arguments, run)
        return run

    return register


def registered() -> dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                                    Command]]:
    """The subcommands registered so far."""
    return dict(_commands)


def config_from(args: argparse.Namespace) -> Config:
    """The configuration named by C{--config} or found the usual way."""
    return load_config(args.config)


def origin_of(config: Config, kind: str, name: str) -> str:
    """Where an account or user comes from: the admin's file or a managed drop-in."""
    origin = config.origin(kind, name)
    if origin is None:
        return "the sandbox" if config.sandbox_dir is not None else "the program"
    if origin != config.path and origin != "sandbox default":
        return f"{origin} (managed by xrelay)"
    return origin
