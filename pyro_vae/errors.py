"""Errors that speak to the user.

Every error the library raises on purpose is a :class:`PyroVAEError`: its message is one paragraph
that says what is wrong and how to fix it. The CLI prints it and exits with the error's
``exit_status``, never a bare traceback: 2 for a usage error (what was asked cannot be done as
asked), 1 for a runtime failure (training diverged, a file could not be read or written).
Anything else escaping is a bug.
"""

from __future__ import annotations


class PyroVAEError(Exception):
    """Base class of the errors whose message is meant for the user."""

    exit_status = 2


class ConfigError(PyroVAEError):
    """An unknown component or option, a wrong type or a value out of range."""


class DataError(PyroVAEError):
    """Data that cannot be loaded, or that does not fit the chosen likelihood."""


class RunDirError(PyroVAEError):
    """A run folder that is missing, incomplete, or that would be overwritten."""


class CheckpointError(PyroVAEError):
    """A checkpoint that is missing, unreadable, or written for another configuration."""


class TrainingDiverged(PyroVAEError):
    """The training loss or the parameters stopped being finite."""

    exit_status = 1


class ProgramError(PyroVAEError):
    """A model program that does not follow the protocol (``programs.py``), or that cannot be loaded."""


class StorageError(PyroVAEError):
    """A file or folder that could not be written or created (a full disk, no permission)."""

    exit_status = 1

    def __init__(self, message: str, cause: OSError | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class DataChanged(DataError):
    """Data on disk that changed, shrank or went away under a running job (a streaming layout)."""

    exit_status = 1


class DistributedError(PyroVAEError):
    """A collective of a data-parallel run that failed: another process stopped, or timed out."""

    exit_status = 1
