"""
How an administrator lives with xrelay: the C{xrelay} subcommands (L{commands}), the
control channel between them and the running daemon (L{control}), metrics (L{metrics}:
the relay's L{xrelay.interfaces.IRelayEvents} sink, fed by the stages directly) and the
other event sinks (L{events}: null, fan-out, the guard around a sink).
"""
