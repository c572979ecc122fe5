"""The errors hopaudit raises for bad input: one readable line each, never a deep traceback.

Every user-facing error derives from :class:`HopauditError`, so the CLI can print the message
alone and exit with status 1, and a notebook user can catch them all at once.
"""

from __future__ import annotations


class HopauditError(Exception):
    """Base class of every error hopaudit raises on purpose."""


class DataError(HopauditError, ValueError):
    """The dataset is empty, malformed, too short, or cannot be tokenized."""


class ModelError(HopauditError, ValueError):
    """The object is not a model, or its transformer blocks cannot be found."""


class CaptureError(HopauditError, RuntimeError):
    """The forward pass or a hook failed in a way the user must know about."""


class SearchError(HopauditError, ValueError):
    """A nearest-neighbour search cannot be done on these patterns (too few, wrong shape)."""


class ZooError(HopauditError, RuntimeError):
    """An embedded model or corpus cannot be loaded; the message says what to install."""


class FormatError(HopauditError, ValueError):
    """A saved audit directory is missing, damaged, or from a newer hopaudit."""
