"""The errors amedl raises for things a user can fix (bad data, settings, paths, model folders).

Every one is an :class:`AMEDLError`, so a caller (the command line, the R
package) can tell a user's mistake, which gets its message, from a bug,
which gets a traceback. Each also derives from the built-in exception a
Python user would expect (``ValueError``, ``FileExistsError``, ...).

This module imports nothing heavy: the command line raises these errors
before it loads the numerical libraries.
"""
from __future__ import annotations

__all__ = [
    "AMEDLError",
    "AMEDLInputError",
    "AMEDLConfigError",
    "AMEDLModelError",
    "AMEDLPathError",
    "AMEDLFolderExistsError",
    "preview",
]


class AMEDLError(Exception):
    """Base of every error whose message tells the user what to fix."""


class AMEDLInputError(AMEDLError, ValueError):
    """The input data cannot be used; the message says how to fix it."""


class AMEDLConfigError(AMEDLError, ValueError):
    """A setting is of the wrong type or out of range; the message gives the valid range."""


class AMEDLModelError(AMEDLError, ValueError):
    """A saved model folder is damaged, edited, or of an unknown format; the message names the file."""


class AMEDLPathError(AMEDLError, ValueError):
    """An output or model path cannot be used (wrong kind, not writable)."""


class AMEDLFolderExistsError(AMEDLError, FileExistsError):
    """The target exists and replacing it was not asked for, or would lose what is not amedl's."""


def preview(items, n: int = 5) -> str:
    """At most ``n`` items of a collection for an error message, with how many were left out.

    >>> preview(["a", "b", "c"], 2)
    "'a', 'b' and 1 more"
    """
    items = list(items)
    shown = ", ".join(repr(str(v)) for v in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")
