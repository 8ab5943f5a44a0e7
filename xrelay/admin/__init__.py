"""
The admin web page: status, queue, browser sign-in for delegated accounts, and
C{/metrics}.  Off unless C{[admin]} is configured; bound to loopback by default.

Public API: L{AdminService} (wired by C{makeService}).
"""

from xrelay.admin.service import AdminService

__all__ = ["AdminService"]
