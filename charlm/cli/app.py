"""The Typer app, its root options, how help looks, and how errors reach the user.

A `CharlmError` raised anywhere below a command becomes one `error:` line on stderr and exit
code 1; a usage mistake (bad option value, unknown option) is one line and exit 1 too; anything
else is a bug and keeps its traceback.

Every command is a `CharlmCommand` and every group a `CharlmGroup`: `-h` is `--help`, a flag
shows no `<bool>` type, and arguments read as upper-case metavars (`RUN`, `[FOLDER]`, `RUN...`).
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

from charlm import __version__
from charlm.cli.views import err
from charlm.errors import CharlmError, CharlmWarning

HELP_SETTINGS = {"help_option_names": ["-h", "--help"]}
F = TypeVar("F", bound=Callable[..., Any])


def _tidy(params: list[Any]) -> list[Any]:
    """Blank a flag's metavar (Typer shows it as its type, `<bool>`: flags take no value) and
    name an argument by its upper-case name unless it has a metavar. Parameters Typer adds
    late (--help, --install-completion) pass through here too."""
    for param in params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
        elif param.param_type_name == "argument" and param.metavar is None:
            param.metavar = (param.name or "").upper()
    return params


def usage_piece(argument: Any) -> str:
    """An argument in the usage line: RUN, [FOLDER], RUN...; a metavar that spells out its own
    shape (`[CONFIG] [KEY=VALUE]...`, `EXPERIMENT [KEY=VALUE]...`) as written."""
    name = str(argument.metavar)
    if "[" in name or " " in name:
        return name
    if argument.nargs != 1 and not name.endswith("..."):
        name += "..."
    return name if argument.required else f"[{name}]"


class CharlmCommand(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _tidy(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        arguments = [p for p in self.get_params(ctx) if p.param_type_name == "argument"]
        options = [self.options_metavar] if self.options_metavar else []
        return [*options, *(usage_piece(a) for a in arguments)]


class CharlmGroup(TyperGroup):
    """Also turns usage mistakes into one line (its parsing, and its commands' under invoke)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _tidy(super().get_params(ctx))

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with one_line_usage_errors():
            return super().invoke(ctx)


@contextlib.contextmanager
def one_line_usage_errors() -> Iterator[None]:
    """A usage mistake (bad option value, unknown option, missing argument) as one `error:` line
    and exit code 1, however the app is called (`charlm`, `app()`, a test's runner)."""
    try:
        yield
    except Exception as e:
        # Typer's usage errors (its click's UsageError/ClickException, vendored or not) carry
        # `format_message` and `exit_code`; recognise them by that rather than by a private path.
        if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            raise
        if type(e).__name__ == "NoArgsIsHelpError":
            raise typer.Exit(0) from None  # a bare `charlm` or `charlm data`: help was shown
        ctx = getattr(e, "ctx", None)
        where = ctx.command_path if ctx is not None else "charlm"
        message = e.format_message().replace("Value error, ", "")  # the validator's prefix
        line = _bad_choice(e) or f"{where}: {message} (see {where} --help)"
        err.print(f"error: {line}", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _bad_choice(e: Exception) -> str | None:
    """A value outside an option's choices, in the library's words for the same mistake
    (`--unknown 'keep': expected one of error, skip, replace`); None for any other error."""
    param = getattr(e, "param", None)
    choices = getattr(getattr(param, "type_descriptor", None), "choices", None)
    errors = getattr(e.__cause__, "errors", None)  # the validator's record holds the value
    if not (choices and callable(errors) and getattr(param, "opts", None)):
        return None
    found = errors()
    value = found[0].get("input") if found else None
    if not isinstance(value, str):
        return None
    allowed = ", ".join(map(str, choices))
    return f"{max(param.opts, key=len)} {value!r}: expected one of {allowed}"


app = typer.Typer(
    cls=CharlmGroup,
    context_settings=HELP_SETTINGS,
    add_completion=True,
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="Train, sample and evaluate character-level LSTM and GRU language models.",
)


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


Version = Annotated[
    bool,
    typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit."),
]


@app.callback()
def root(version: Version = False) -> None:
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
    """Run the app: Ctrl-C before a command starts is `aborted` and exit code 130."""
    signal.signal(signal.SIGINT, _interrupt)
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        err.print("aborted", markup=False)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
