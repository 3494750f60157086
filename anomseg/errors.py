"""Exceptions raised by anomseg. Every message is one line naming the file or value and the fix."""


class AnomsegError(Exception):
    """Base class of every error anomseg raises on bad input."""


class DatasetError(AnomsegError, ValueError):
    """A dataset root, split, file or label map is missing or malformed."""
