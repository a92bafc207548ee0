"""The one exception type for mistakes a user can fix.

Everything the CLI shows as a one-line `error: ...` is a `CharlmError`; anything else is a bug and
keeps its traceback.
"""


class CharlmError(Exception):
    """A user-facing error: the message names the file, key or value and what was expected."""


class CharlmWarning(UserWarning):
    """Something a user should know that does not stop the command (the CLI shows `warning:`)."""


def missing_package(needs: str, packages: list[str], extra: str, remedy: str = "") -> CharlmError:
    """The one wording for optional packages that are not installed: the packages themselves, or
    this checkout's extra (never `pip install charlm[...]`: that name on the public package index
    is another project). `remedy` says how to do without, where there is a way."""
    one = len(packages) == 1
    named = " and ".join(packages)
    return CharlmError(
        f"{needs} needs the {named} package{'' if one else 's'}, which {'is' if one else 'are'} "
        f"not installed; install {'it' if one else 'them'} with pip install {' '.join(packages)} "
        f"(or pip install -e '.[{extra}]' in the charlm checkout)"
        + (f" or {remedy}" if remedy else "")
    )
