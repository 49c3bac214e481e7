"""The commands on top of every side: the ``ponybot`` CLI, the ``up`` supervisor and their subcommands.

Layers: ``ponybot.commands`` -> ``bot`` | ``worker`` | ``gallery`` -> the contract (the rest of ``ponybot``).
A command imports its side only when it runs.
"""
