"""Exceptions with a meaning for the user (the command line maps them to exit codes)."""

from __future__ import annotations


class MedlrpError(Exception):
    """Base class of medlrp's own errors."""


class InputError(MedlrpError, ValueError):
    """Bad input or usage: the command line prints one line and exits with code 2."""


class UnsupportedLayerError(MedlrpError, TypeError):
    """An operation of the model has no relevance rule; the message names the module and its type."""


class OutputError(InputError):
    """The outputs cannot be written (a file where a folder is wanted, no permission, a full disk).

    Reported like bad input: one line naming the file, exit code 2.
    """
