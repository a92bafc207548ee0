"""The one exception type for mistakes a user can fix.

Everything the CLI shows as a one-line `error: ...` is a `CharlmError`; anything else is a bug and
keeps its traceback.
"""


class CharlmError(Exception):
    """A user-facing error: the message names the file, key or value and what was expected."""


class CharlmWarning(UserWarning):
    """Something a user should know that does not stop the command (the CLI shows `warning:`)."""
