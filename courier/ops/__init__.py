"""Operator commands' logic and what they print; the CLI wraps each in a thin command.

A module per command (or concept) holds the logic and, as a function the CLI calls, the
command itself: it prints through an :class:`courier.core.output.Output` and returns the exit
code, or returns the text to print. A new operator command is such a function here plus a
thin wrapper in a ``courier.cli`` module that parses the arguments and calls it.
"""
