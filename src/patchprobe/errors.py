"""Exception types, all in one place. Every error names the file, field or value at fault and what to do about it.

The CLI turns any `PatchprobeError` into one red line and exit code 2 (no traceback).
"""

from __future__ import annotations


class PatchprobeError(Exception):
    """Base class for all errors raised by patchprobe."""


class AudioError(PatchprobeError):
    """A clip could not be decoded or is unusable (missing, unreadable, empty, non-finite, too short).

    Attributes:
        path: the file (or clip id) at fault.
        problem: a short description of what is wrong.
    """

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ManifestError(PatchprobeError):
    """A dataset manifest is malformed (missing column, bad split, unknown class, ...)."""


class DatasetError(PatchprobeError):
    """A benchmark dataset cannot be found, read, or mapped to its class list (names the files to fetch)."""


class BankError(PatchprobeError):
    """A token-map bank is missing, incomplete, corrupt, or incompatible with the request."""


class CheckpointError(PatchprobeError):
    """A checkpoint file is missing, unreadable, or does not fit the model."""


class RunError(PatchprobeError):
    """A run folder is missing, corrupt, held by another process, or holds a different finished run."""


class ExportError(PatchprobeError):
    """A probe cannot be written in the requested format."""


class RegistryError(PatchprobeError, KeyError):
    """An unknown name was asked of a registry (encoder, probe, dataset)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class StorageUnavailableError(PatchprobeError):
    """A search's study storage (SQLite file, PostgreSQL server) did not answer within the retry period."""


class SweepIncompleteError(PatchprobeError):
    """A sweep gave up waiting for trials other workers hold (`--wait-seconds`); rerunning continues it."""
