"""The project's error types.

Every error that reports bad input or an unusable environment derives from
:class:`CrossFunctionalError`; the command line prints those as one line and
exits with status 2, while any other exception (an internal bug) keeps its
traceback.
"""

from __future__ import annotations

__all__ = ["CrossFunctionalError", "WorkflowError"]


class CrossFunctionalError(Exception):
    """Base class of the errors that name a problem with the user's input,
    files, options or environment (not an internal bug)."""


class WorkflowError(CrossFunctionalError, ValueError):
    """A workflow argument that cannot be used (a threshold out of range, an
    unknown optimizer, a cell filter on a non-periodic structure, ...)."""
