"""Errors of the local stack control: :class:`StackError` and its subclasses."""

from __future__ import annotations


class StackError(Exception):
    """Root of every error raised by the local stack control."""


class MissingToolError(StackError):
    """A program the stack needs (java, mvn, PostgreSQL, temporal) is not installed."""


class PortInUseError(StackError):
    """A port the stack needs is taken by a process that is not our running service."""


class ServiceStartError(StackError):
    """A service failed to start; the message ends with the tail of its log."""
