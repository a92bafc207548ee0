"""`charlm train` and `charlm sweep`: training runs, with progress on stderr."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from charlm.cli.app import fail, friendly, split_train_args
from charlm.cli.complete import complete_config, complete_experiment, complete_run
from charlm.cli.progress import ProgressView, SweepView, say
from charlm.cli.views import comparison_table, err, table_console, train_table
from charlm.errors import CharlmError

if TYPE_CHECKING:
    from charlm.config import Config
    from charlm.experiment import Experiment

INIT_FROM_HELP = (
    "Fine-tune: start from this run's (best, else newest) checkpoint or a checkpoint file "
    "(sets train.init_from; see docs/api.md)."
)


Opt = typer.Option
TRAIN_ARGS_HELP = (
    "A YAML config or a preset's name (`charlm presets`; built-in defaults without one), then "
    "dotted overrides, e.g. train.lr=3e-4 model.cell=gru."
)
RESUME_HELP = (
    "Continue this run folder from its newest intact checkpoint, with its recorded config (only "
    "train.max_steps, train.max_time and train.device may be overridden)."
)
NPROC_HELP = (
    "Data-parallel training in N processes on this machine (launches torchrun; train.batch_size "
    "is the global batch). See docs/distributed.md."
)
TrainArgs = Annotated[
    list[str] | None,
    typer.Argument(metavar="[CONFIG] [KEY=VALUE]...", help=TRAIN_ARGS_HELP, show_default=False,
                   autocompletion=complete_config),
]  # fmt: skip
RunOut = Annotated[
    Path | None, Opt("--out", "-o", help="Run folder (default: runs/<config>-<time>).")
]
Quiet = Annotated[bool, Opt("--quiet", "-q", help="Plain log lines instead of a progress bar.")]
Resume = Annotated[Path | None, Opt("--resume", help=RESUME_HELP, autocompletion=complete_run)]
InitFrom = Annotated[
    str | None, Opt("--init-from", help=INIT_FROM_HELP, autocompletion=complete_run)
]
Nproc = Annotated[int | None, Opt("--nproc", help=NPROC_HELP, show_default=False)]


@friendly
def train(
    args: TrainArgs = None,
    out: RunOut = None,
    quiet: Quiet = False,
    resume: Resume = None,
    init_from: InitFrom = None,
    nproc: Nproc = None,
) -> None:
    """Train a model; the run folder gets config.yaml, metrics.jsonl and checkpoints/.

    Ctrl-C or SIGTERM finishes the current step, saves a checkpoint and prints the command that
    resumes it (exit code 130 or 143).
    """
    from charlm import distributed
    from charlm.cpu.memory import keep_freed_memory
    from charlm.training import TrainingInterrupted
    from charlm.training import resume as resume_training
    from charlm.training import train as run_training
    from charlm.training.signals import ignored_after_stop

    args = [*(args or []), *([f"train.init_from={init_from}"] if init_from else [])]
    config_path, overrides = split_train_args(args)
    config_path = _checked_config(resume, config_path, out)
    if nproc is not None and nproc != 1:
        raise typer.Exit(_launch(nproc, args or [], config_path, out, resume, quiet))
    # Under torchrun, the processes other than rank 0 train silently; rank 0 reports.
    follower = distributed.is_follower()
    show = ProgressView(plain=quiet or follower or not err.is_terminal)
    keep_freed_memory()  # the whole process is ours: keep a step's freed buffers for the next
    try:  # this process only stops after a stop: a second Ctrl-C must not cut that short
        with ignored_after_stop():
            if resume is not None:
                with show:
                    result = resume_training(resume, overrides, on_event=show.handle)
            else:
                config, run_dir = _new_run(config_path, overrides, out)
                with show:
                    result = run_training(config, run_dir, on_event=show.handle)
    except TrainingInterrupted as stop:
        _finish_report()
        if not follower:
            err.print(f"{stop}", markup=False, soft_wrap=True)
            err.print(f"resume with: {stop.resume_command}", markup=False, soft_wrap=True)
        raise typer.Exit(stop.exit_code) from None
    except distributed.PeerFailed:
        raise typer.Exit(1) from None  # another process printed the error
    except CharlmError:
        _finish_report()
        raise
    except KeyboardInterrupt:
        raise fail("interrupted before training started; nothing was saved", 130) from None
    if not follower:
        err.print(train_table(result))


def _checked_config(resume: Path | None, config_path: str | None, out: Path | None) -> str | None:
    """The CONFIG argument's file (a preset's, for a name), after refusing what --resume
    cannot take."""
    from charlm.presets import resolve_config

    if resume is not None and config_path is not None:
        raise CharlmError(
            f"--resume {resume}: a resumed run uses the config recorded in it; drop {config_path} "
            f"(KEY=VALUE overrides of budgets are allowed)"
        )
    if resume is not None and out is not None:
        raise CharlmError(
            f"--resume {resume}: a resumed run continues in its own folder; drop --out"
        )
    return resolve_config(config_path) if config_path else None


def _new_run(
    config_path: str | None, overrides: list[str], out: Path | None
) -> tuple[Config, Path]:
    """A new run's config and its folder (a missing corpus is the library's error, raised before
    the folder is made)."""
    from charlm.config import load_config
    from charlm.rundir import default_run_dir

    run_dir = out if out is not None else default_run_dir(config_path)
    return load_config(config_path, overrides), run_dir


def _launch(
    nproc: int,
    args: list[str],
    config_path: str | None,
    out: Path | None,
    resume: Path | None,
    quiet: bool,
) -> int:
    """`--nproc N`: run this command in N torchrun processes; their exit code."""
    from charlm import distributed
    from charlm.rundir import default_run_dir

    if distributed.launched_by_torchrun():
        raise CharlmError("--nproc: already running under torchrun; drop --nproc")
    if resume is None and out is None:
        out = default_run_dir(config_path)  # one folder name for every process
    forwarded = [*args]
    forwarded += ["--out", str(out)] if out is not None else []
    forwarded += ["--resume", str(resume)] if resume is not None else []
    forwarded += ["--quiet"] if quiet else []
    return distributed.launch(nproc, forwarded)


def _finish_report() -> None:
    """Under torchrun, let this process print its last lines before it is stopped.

    torchrun sends SIGTERM to the remaining processes as soon as one exits with an error.
    """
    import os
    import signal

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


SWEEP_ARGS_HELP = (
    "An experiment YAML (see docs/experiments.md) or a shipped experiment's name (`charlm "
    "presets`), then dotted overrides applied to every run, e.g. train.max_time=60 "
    "data.corpus=my.txt."
)
SweepArgs = Annotated[
    list[str],
    typer.Argument(metavar="EXPERIMENT [KEY=VALUE]...", help=SWEEP_ARGS_HELP, show_default=False,
                   autocompletion=complete_experiment),
]  # fmt: skip
SweepOut = Annotated[
    Path | None, Opt("--out", "-o", help="Folder for the runs (default: runs/<experiment>).")
]
SweepQuiet = Annotated[bool, Opt("--quiet", "-q", help="Plain log lines instead of progress bars.")]


@friendly
def sweep(args: SweepArgs, out: SweepOut = None, quiet: SweepQuiet = False) -> None:
    """Train every run of an experiment in turn (skipping finished ones), then compare them."""
    from charlm.cpu.memory import keep_freed_memory
    from charlm.experiment import load_experiment
    from charlm.presets import check_corpus, resolve_config
    from charlm.runs import compare_runs
    from charlm.sweep import default_sweep_dir, run_sweep
    from charlm.training import TrainingInterrupted
    from charlm.training.signals import ignored_after_stop

    path, overrides = split_train_args(args)
    if path is None:
        raise CharlmError("expected an EXPERIMENT file before the KEY=VALUE overrides")
    shown, path = path, resolve_config(path, experiments=True)  # a preset shows by its name
    experiment = load_experiment(path, overrides)
    for planned in experiment.runs:
        check_corpus(planned.config.data.corpus)
    folder = out if out is not None else default_sweep_dir(path)
    say(sweep_banner(experiment, folder, overrides, shown))
    view = SweepView(plain=quiet or not err.is_terminal)
    keep_freed_memory()
    try:
        with ignored_after_stop():
            result = run_sweep(experiment, folder, on_event=view.handle)
    except TrainingInterrupted as stop:
        view.close()
        again = shlex.join(["charlm", "sweep", *args, "--out", str(folder)])
        err.print(f"{stop}", markup=False, soft_wrap=True)
        err.print(f"continue the sweep with: {again}", markup=False, soft_wrap=True)
        raise typer.Exit(stop.exit_code) from None
    finally:
        view.close()
    table_console().print(comparison_table(compare_runs(result.runs), f"charlm sweep: {shown}"))
    if result.plot is not None:
        say(f"plot: {result.plot}")


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 120 and seconds % 60 == 0 else f"{seconds:g} s"


def sweep_banner(
    experiment: Experiment, folder: Path, overrides: list[str], shown: str | None = None
) -> str:
    """The line a sweep starts with: its runs and the budget each one actually gets (the file's
    `set:` after the command line's overrides). The file's description follows only without
    overrides, which may contradict it ("five minutes each" under train.max_time=20). `shown`
    names the experiment as the user did (a preset's name rather than its installed path)."""
    train = experiment.runs[0].config.train  # the budget is shared: it cannot be swept
    budget = [f"{train.max_steps:,} steps"] if train.max_steps is not None else []
    budget += [_duration(train.max_time)] if train.max_time is not None else []
    each = " or ".join(budget) + (" each, whichever comes first" if len(budget) > 1 else " each")
    names = ", ".join(run.name for run in experiment.runs)
    what = shown or experiment.path
    line = f"sweep {what}: {len(experiment.runs)} runs into {folder}, {each}: {names}"
    return line + (
        f"\n{experiment.description}" if experiment.description and not overrides else ""
    )
