"""One vocabulary for user mistakes: the CLI, the trainer and the UI show these as advice, and nothing else.

Every class here is a mistake the user can fix, and its message is one sentence that says how (the UI
capitalises it and strips server paths; the CLI prints it after "error: "). Any other exception, a bare
ValueError from numpy included, is a bug: it is logged with its traceback and shown only by its type.

The second base of several classes (ValueError, OSError, RuntimeError) is what each was before it joined
the family, so code that caught the old type keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the message says what to change."""


class ConfigError(UserError, ValueError):
    """Settings that cannot train or be used: a value out of range, an unknown name, a mismatch."""


class DataError(UserError, ValueError):
    """Bad user data; the message names the file and says what to fix."""


class CheckpointError(UserError, ValueError):
    """A file that is not a usable segdemo checkpoint; the message says why and what to do."""


class CheckpointWriteError(UserError, OSError):
    """Saving failed (disk full, permissions); the previous checkpoint at that path is untouched."""


class BudgetError(UserError, ValueError):
    """A request needs more memory than this server allows; the message names the limit and what to lower."""


class JobError(UserError):
    """A refusal about a run (none running, queue full, not yours); the message says what to do."""


class LimitError(UserError):
    """A fair-use limit was reached; the message says what to do and, where known, when to come back."""


class ExportError(UserError, RuntimeError):
    """The export cannot be written (a package is missing, the result disagrees); the message says what to do."""


class PretrainedUnavailable(UserError, RuntimeError):
    """ImageNet weights were asked for and cannot be had (offline, no cache); train from scratch instead."""


def is_user_error(e: BaseException) -> bool:
    """True for a mistake the user can fix (show its message); False for a bug (log its traceback)."""
    return isinstance(e, UserError)
