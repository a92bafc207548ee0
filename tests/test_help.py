"""How `--help` reads and what the shell completes: -h, choices, usage lines, completion."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from charlm.cli import app
from charlm.cli import choices as ch
from charlm.cli.app import CharlmCommand, CharlmGroup
from charlm.cli.complete import (
    complete_config,
    complete_corpus_name,
    complete_experiment,
    complete_run,
)

runner = CliRunner()
WIDTH = {"COLUMNS": "100"}


def command_paths() -> list[list[str]]:
    """Every command and group under `charlm`, as argv prefixes ([] is charlm itself)."""
    found: list[list[str]] = []

    def walk(command: typer.core.TyperGroup | typer.core.TyperCommand, path: list[str]) -> None:
        found.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


PATHS = command_paths()


def help_text(argv: list[str]) -> str:
    result = runner.invoke(app, argv, env=WIDTH, prog_name="charlm")
    assert result.exit_code == 0, result.output
    return result.stdout


def test_the_walk_finds_every_command() -> None:
    names = {" ".join(p) for p in PATHS}
    assert {"", "train", "sample", "presets", "data", "data fetch", "data prepare"} <= names


def test_every_command_and_group_uses_charlms_classes() -> None:
    def walk(command: object) -> None:
        sub = getattr(command, "commands", None)
        assert isinstance(command, CharlmGroup if sub is not None else CharlmCommand), command
        for child in (sub or {}).values():
            walk(child)

    walk(typer.main.get_command(app))


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "charlm")
def test_dash_h_is_help_and_no_flag_shows_a_bool_type(path: list[str]) -> None:
    long = help_text([*path, "--help"])
    assert "Usage: charlm" in long
    assert help_text([*path, "-h"]) == long
    assert "<bool>" not in long


def test_root_help_lists_completion_options_without_types() -> None:
    text = help_text(["--help"])
    for line in text.splitlines():
        if "--install-completion" in line or "--version" in line:
            assert "<" not in line, line


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("sample", ["<cpu|cuda|mps|auto>", "<error|skip|replace>", "<fused|reference>",
                    "<fp32|bf16|int8|auto>"]),
        ("eval", ["<cpu|cuda|mps|auto>", "<fp32|bf16|int8>", "<val|test|train>",
                  "<error|skip|replace>", "<fused|reference>"]),
        ("serve", ["<cpu|cuda|mps>", "<fp32|bf16|int8|auto>", "<error|skip|replace>"]),
        ("export", ["<weights|onnx|torchscript>", "<fp32|bf16|fp16>"]),
    ],
)  # fmt: skip
def test_options_with_fixed_values_list_them(command: str, shown: list[str]) -> None:
    text = help_text([command, "--help"])
    for choice in shown:
        assert choice in text, choice


def test_the_choices_are_the_librarys() -> None:
    from charlm.config import ModelConfig
    from charlm.export import DTYPES, FORMATS
    from charlm.precision import SAMPLE_PRECISIONS
    from charlm.vocab import UNKNOWN_POLICIES

    values = typing.get_args
    assert values(ch.Unknown) == UNKNOWN_POLICIES
    assert values(ch.Precision) == tuple(SAMPLE_PRECISIONS)
    assert values(ch.SamplePrecision) == (*SAMPLE_PRECISIONS, "auto")
    assert values(ch.Impl) == values(typing.get_type_hints(ModelConfig)["impl"])
    assert values(ch.ExportFormat) == FORMATS
    assert values(ch.ExportDtype) == tuple(DTYPES)


USAGE = {
    "": "charlm [OPTIONS] COMMAND [ARGS]...",
    "train": "charlm train [OPTIONS] [CONFIG] [KEY=VALUE]...",
    "sample": "charlm sample [OPTIONS] RUN",
    "eval": "charlm eval [OPTIONS] RUN",
    "sweep": "charlm sweep [OPTIONS] EXPERIMENT [KEY=VALUE]...",
    "presets": "charlm presets [OPTIONS]",
    "runs": "charlm runs [OPTIONS] [FOLDER]",
    "compare": "charlm compare [OPTIONS] RUN...",
    "info": "charlm info [OPTIONS] RUN|CHECKPOINT",
    "export": "charlm export [OPTIONS] RUN",
    "serve": "charlm serve [OPTIONS] RUN",
    "data": "charlm data [OPTIONS] COMMAND [ARGS]...",
    "data prepare": "charlm data prepare [OPTIONS] [CORPUS] [KEY=VALUE]...",
    "data fetch": "charlm data fetch [OPTIONS] NAME",
}


def test_every_command_has_an_expected_usage_line() -> None:
    assert sorted(USAGE) == sorted(" ".join(p) for p in PATHS)


@pytest.mark.parametrize("path", sorted(USAGE), ids=lambda p: p or "charlm")
def test_usage_lines_name_arguments_in_upper_case(path: str) -> None:
    text = help_text([*path.split(), "--help"])
    usage = next(line.strip() for line in text.splitlines() if "Usage:" in line)
    assert usage == f"Usage: {USAGE[path]}"
    if "COMMAND" in usage:
        return  # a group: no arguments of its own
    arguments = text.split("Arguments")[1].split("╰")[0] if "Arguments" in text else ""
    for word in USAGE[path].split("[OPTIONS]")[1].split():
        assert word.strip("[].") in arguments  # the panel names each argument as the usage does


def test_a_missing_argument_is_named_by_its_metavar(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from charlm.cli import main

    monkeypatch.setattr(sys, "argv", ["charlm", "export"])
    with pytest.raises(SystemExit):
        main()
    assert "Missing argument 'RUN'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        ("sample x --precision fp16", "--precision 'fp16': expected one of fp32, bf16, int8, auto"),
        ("eval x --precision auto", "--precision 'auto': expected one of fp32, bf16, int8"),
        ("eval x --split dev", "--split 'dev': expected one of val, test, train"),
        ("serve x --device auto", "--device 'auto': expected one of cpu, cuda, mps"),
        ("export x -f zip -o y", "--format 'zip': expected one of weights, onnx, torchscript"),
        (
            "export x -f weights -o y --dtype int8",
            "--dtype 'int8': expected one of fp32, bf16, fp16",
        ),
        ("sample x --unknown keep", "--unknown 'keep': expected one of error, skip, replace"),
        ("sample x --impl cuda", "--impl 'cuda': expected one of fused, reference"),
    ],
)
def test_a_bad_choice_is_one_error_line_naming_the_choices(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: str, line: str
) -> None:
    """In the library's words for the same mistake, through `charlm` and the app alike."""
    from charlm.cli import main

    monkeypatch.setattr(sys, "argv", ["charlm", *argv.split()])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 1
    assert capsys.readouterr().err == f"error: {line}\n"
    result = runner.invoke(app, argv.split())
    assert result.exit_code == 1 and result.stderr == f"error: {line}\n"


def test_other_usage_mistakes_name_the_command() -> None:
    result = runner.invoke(app, ["sample", "x", "-n", "many"], prog_name="charlm")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: charlm sample: Invalid value for '--length'")
    assert result.stderr.endswith("(see charlm sample --help)\n")
    assert result.stderr.count("\n") == 1


def test_show_completion_prints_charlms_bash_script(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without shell detection, --show-completion takes the shell's name.
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    result = runner.invoke(app, ["--show-completion", "bash"], prog_name="charlm")
    assert result.exit_code == 0, result.output
    assert "_charlm_completion()" in result.stdout
    assert "_CHARLM_COMPLETE=complete_bash" in result.stdout
    assert "complete -o default -F _charlm_completion charlm" in result.stdout


def make_runs(root: Path) -> None:
    """runs/a and runs/sweep/r1 are runs; runs/empty is not; a checkpoint folder is no run."""
    for run in ("runs/a", "runs/sweep/r1", "runs/.hidden"):
        (root / run / "checkpoints").mkdir(parents=True)
        (root / run / "config.yaml").write_text("model: {}\n")
    (root / "runs/empty").mkdir()
    (root / "configs").mkdir()
    (root / "configs/mine.yaml").write_text("train: {}\n")
    (root / "notes.txt").write_text("x")


def test_run_completion_finds_run_folders_below(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_runs(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert complete_run("") == ["runs/a", "runs/sweep/r1"]
    assert complete_run("runs/s") == ["runs/sweep/r1"]
    assert complete_run("runs/.") == ["runs/.hidden"]
    assert complete_run("nothing") == []
    assert complete_run(f"{tmp_path}/runs/sw") == [f"{tmp_path}/runs/sweep/r1"]


def test_config_completion_offers_presets_then_yaml_files_but_no_run_configs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_runs(tmp_path)
    monkeypatch.chdir(tmp_path)
    values = [value for value, _ in complete_config("")]
    assert values[-1] == "configs/mine.yaml" and "tiny" in values
    assert not any("config.yaml" in v for v in values)
    shakespeare = dict(complete_config("shak"))
    assert set(shakespeare) == {"shakespeare-lstm", "shakespeare-gru"}
    assert "Tiny Shakespeare" in shakespeare["shakespeare-lstm"]  # its description
    assert complete_config("train.lr=") == []
    assert [v for v, _ in complete_experiment("lstm")] == ["lstm-vs-gru"]
    assert complete_corpus_name("tiny") == ["tinyshakespeare"]


def complete(words: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What bash's Tab after `words` would offer (the words end with the incomplete one)."""
    monkeypatch.setenv("_CHARLM_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", words)
    monkeypatch.setenv("COMP_CWORD", str(len(words.split(" ")) - 1))
    result = runner.invoke(app, [], prog_name="charlm")
    return result.stdout.split()


def test_tab_completes_choices_runs_and_presets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_runs(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert complete("charlm sample --precision ", monkeypatch) == ["fp32", "bf16", "int8", "auto"]
    assert complete("charlm sample --device c", monkeypatch) == ["cpu", "cuda"]
    assert complete("charlm sample r", monkeypatch) == ["runs/a", "runs/sweep/r1"]
    assert complete("charlm compare runs/a r", monkeypatch) == ["runs/a", "runs/sweep/r1"]
    assert complete("charlm train --resume runs/a", monkeypatch) == ["runs/a"]
    assert complete("charlm train ti", monkeypatch) == ["tiny"]
    assert complete("charlm data fetch t", monkeypatch) == ["tinyshakespeare"]


def test_completion_and_presets_do_not_import_torch(tmp_path: Path) -> None:
    """The shell runs charlm on every Tab: it must answer without loading torch."""
    make_runs(tmp_path)
    code = (
        "import sys; from charlm.cli import app\n"
        "from charlm.cli.complete import complete_config, complete_run\n"
        "assert complete_run('') and complete_config('')\n"
        "try:\n    app(['presets'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\nprint('ok')"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")
