"""
xrelay's setup: from one admin sign-in to a delivering Microsoft 365 account.

One engine (L{xrelay.setup.engine.SetupEngine}), two faces: C{xrelay setup microsoft}
(L{xrelay.setup.command}) and the admin page's "Add an account" wizard
(L{xrelay.admin.setup_wizard}).  The pieces: the plan shown before anything is asked
(L{xrelay.setup.plan}), the admin's in-memory sign-in (L{xrelay.setup.signin}), Graph's
app management (L{xrelay.setup.graphapi}), Exchange's admin API
(L{xrelay.setup.exchangeapi}), the credential made on this host
(L{xrelay.setup.credential}) and certificate rotation (L{xrelay.setup.rotate}).

Nothing here ever writes the admin's token anywhere.
"""

from xrelay.setup.plan import BadRequest, Plan, SetupRefused, SetupRequest, make_plan

__all__ = ["BadRequest", "Plan", "SetupRefused", "SetupRequest", "make_plan"]
