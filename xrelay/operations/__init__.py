"""
How an administrator lives with xrelay: the C{xrelay} subcommands (L{commands}), the
control channel between them and the running daemon (L{control}), metrics (L{metrics})
and the log observer that turns the stages' events into numbers and a mail log
(L{events}).
"""
