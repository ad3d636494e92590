"""Operator commands' logic (status, limit, replay); the CLI wraps each in a thin command.

A new operator command is one function here plus its wrapper in ``courier.cli``.
"""
