"""Errors and warnings raised by the data layer.

A bad file deep inside a 1,000-image dataset should stop a sweep with a message that
names the file and says what was expected, not with a shape error inside a model three
layers down. Loaders raise :class:`DataError` for that; it subclasses ``ValueError`` so
callers that already treat bad input as a ``ValueError`` keep working.
"""

from __future__ import annotations


class DataError(ValueError):
    """A dataset file or folder is missing, unreadable or does not hold what the layout promises."""


class DataWarning(UserWarning):
    """Something about a dataset was fixed up or skipped (held-out val split, skipped bad samples)."""


class DownloadError(RuntimeError):
    """A dataset archive could not be fetched, failed its checksum, or could not be unpacked."""
