"""The Typer app, its root options, and how errors reach the user.

A `CharlmError` raised anywhere below a command becomes one `error:` line on stderr and exit
code 1; a usage mistake (bad option value, unknown option) is one line and exit 1 too; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import signal
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from charlm import __version__
from charlm.cli.views import err
from charlm.errors import CharlmError, CharlmWarning

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="Train, sample and evaluate character-level LSTM and GRU language models.",
)
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one error line to stderr and return the exit to raise."""
    err.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True, highlight=False)
    return typer.Exit(code)


def friendly(fn: F) -> F:
    """Turn a CharlmError raised anywhere below a command into one line and exit code 1, and a
    CharlmWarning into one `warning:` line on stderr."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = functools.partial(_show_warning, warnings.showwarning)
                return fn(*args, **kwargs)
        except CharlmError as e:
            from rich.markup import escape

            raise fail(escape(str(e))) from None

    return wrapper  # type: ignore[return-value]


def _show_warning(
    fallback: Callable[..., None], message: Warning | str, category: type, *rest: Any
) -> None:
    """A CharlmWarning as one `warning:` line; any other warning as Python shows it."""
    if issubclass(category, CharlmWarning):
        err.print(f"warning: {message}", markup=False, soft_wrap=True)
    else:
        fallback(message, category, *rest)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"charlm {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Train, sample and evaluate character-level LSTM and GRU language models."""


def split_train_args(args: list[str]) -> tuple[str | None, list[str]]:
    """[CONFIG] [KEY=VALUE ...]: the one argument without '=' is the config file."""
    configs = [a for a in args if "=" not in a]
    overrides = [a for a in args if "=" in a]
    if len(configs) > 1:
        raise CharlmError(
            f"expected at most one CONFIG file, got {', '.join(configs)}; "
            f"overrides look like KEY=VALUE"
        )
    return (configs[0] if configs else None), overrides


def _interrupt(signum: int, frame: object) -> None:
    """Ctrl-C outside training: a KeyboardInterrupt as usual (exit 130), and the ones after it
    ignored, so none can land in the exit itself (a traceback from an atexit hook, or death by
    the signal instead of exit code 130)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def main() -> None:
    """Run the app; a usage mistake (bad option value, unknown option) is one line and exit 1."""
    signal.signal(signal.SIGINT, _interrupt)
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        err.print("aborted", markup=False)
        sys.exit(130)
    except Exception as e:
        # Typer's usage errors (its click's UsageError/ClickException, vendored or not) carry
        # `format_message` and `exit_code`; recognise them by that rather than by a private path.
        if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            raise
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError":
            sys.exit(0)  # a bare `charlm` or `charlm data`: Typer has already shown the help
        where = ctx.command_path if ctx is not None else "charlm"
        err.print(
            f"error: {where}: {e.format_message()} (see {where} --help)",
            markup=False,
            soft_wrap=True,
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
