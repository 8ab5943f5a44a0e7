"""
The refusal every operator request shares (the control socket, C{xrelay test-message},
the admin page): one module below the ones that raise it, so that they need not
import each other for it.
"""

from __future__ import annotations

__all__ = ["ControlRefusal"]


class ControlRefusal(Exception):
    """A request the daemon understood and refuses, with the reason for the operator."""
