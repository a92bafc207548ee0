"""Tables that fit the console: every line within the width, no number or status cut."""

from __future__ import annotations

import re
from io import StringIO
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from charlm.cli.views import comparison_table, eval_files_table, eval_table, runs_table, train_table
from charlm.rundir import Summary
from charlm.runs import RunInfo, compare_runs

LONG_KEY = "train.checkpoint_every_s"
STATUSES = ["finished", "interrupted", "failed"]


def make_run(i: int, name: str | None = None) -> RunInfo:
    """A run as `charlm compare` reads it, with long keys and numbers of every width."""
    config = {
        "data": {"corpus": f"data/corpus-number-{i % 2}.txt"},
        "model": {"cell": ["lstm", "gru"][i % 2], "hidden_size": 128 * (1 + i % 3)},
        "train": {"lr": 0.006, "max_time": 300, "checkpoint_every_s": 100000 + i},
    }
    summary = Summary(
        status=STATUSES[i % 3],  # type: ignore[arg-type]
        steps=100000 + i,
        elapsed_s=300.4 + i,
        chars_per_s=1234567.0 + i,
        final_val={"bpc": 1.4612 + i / 1000},
        best_val_bpc=1.4431 + i / 1000,
        parameters=1234567 + i,
    )
    name = name or f"cell={config['model']['cell']},checkpoint_every_s={100000 + i}"
    return RunInfo(Path(f"runs/x/{i}"), name, STATUSES[i % 3], config, summary, [], 1234567 + i)


def numbers(i: int) -> list[str]:
    """Every number `make_run(i)` shows, as the table writes it."""
    return [
        f"{1234567 + i:,}",  # parameters
        f"{1234567 + i:,}",  # chars/s
        f"{100000 + i:,}",  # steps
        str(100000 + i),  # train.checkpoint_every_s
        str(128 * (1 + i % 3)),
        f"{1.4612 + i / 1000:.4f}",
        f"{1.4431 + i / 1000:.4f}",
        f"5m{int(0.4 + i):02d}s",
    ]


def render(renderable: object, width: int) -> list[str]:
    console = Console(file=StringIO(), width=width, force_terminal=False)
    console.print(renderable)
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert lines and all(len(line) <= width for line in lines)
    assert "…" not in "".join(lines)  # nothing cut with an ellipsis
    return lines


def cells(lines: list[str]) -> set[str]:
    """Every cell's text on every line, between the table's borders."""
    return {part.strip() for line in lines for part in re.split(r"[│┃]", line)}


@pytest.mark.parametrize("width", [80, 160])
@pytest.mark.parametrize("n_runs", [3, 9])
def test_comparison_fits_the_width_and_shows_every_number_whole(width: int, n_runs: int) -> None:
    runs = [make_run(i) for i in range(n_runs)]
    comparison = compare_runs(runs)
    assert LONG_KEY in comparison.differing and "data.corpus" in comparison.differing
    shown = cells(render(comparison_table(comparison, "charlm compare"), width))
    for i in range(n_runs):
        assert set(numbers(i)) <= shown, i
    assert set(STATUSES) <= shown


def test_a_few_runs_on_a_wide_console_are_one_row_each() -> None:
    runs = [make_run(i, name=f"run-{i}") for i in range(3)]
    lines = render(comparison_table(compare_runs(runs), "charlm compare"), 160)
    header = next(line for line in lines if "run" in line and "status" in line)
    assert "parameters" in header and "steps" in header
    rows = [line for line in lines if re.search(r"run-\d", line)]
    assert len(rows) == 3 and all("1,234,56" in row for row in rows)


def test_many_runs_on_a_narrow_console_turn_and_split_into_tables_of_a_few_runs() -> None:
    runs = [make_run(i, name=f"run-{i}") for i in range(9)]
    lines = render(comparison_table(compare_runs(runs), "charlm compare"), 80)
    titles = [line.strip() for line in lines if line.startswith("charlm compare")]
    spans = [re.fullmatch(r"charlm compare \((\d)-(\d) of 9 runs\)", t) for t in titles]
    assert len(spans) > 1 and all(spans), titles
    covered = [i for span in spans if span for i in range(int(span[1]), int(span[2]) + 1)]
    assert covered == list(range(1, 10))  # every run once, in order
    shown = cells(lines)
    assert {f"run-{i}" for i in range(9)} <= shown  # the runs are the columns
    assert {"best val bpc", "parameters", "status"} <= shown  # the results are the rows
    assert "2 other config keys are the same in every run" in " ".join(lines)


def test_keys_are_whole_where_the_table_has_room() -> None:
    """Piped output is 200 columns wide: a few runs fit without folding a key."""
    comparison = compare_runs([make_run(i, name=f"run-{i}") for i in range(3)])
    shown = cells(render(comparison_table(comparison, "charlm compare"), 200))
    assert set(comparison.differing) <= shown


def test_runs_table_keeps_a_row_per_run_with_long_names() -> None:
    runs = [make_run(i) for i in range(6)]
    lines = render(runs_table(Path("runs"), runs), 80)
    assert sum(line.startswith("charlm runs") for line in lines) == 1  # one table, not split
    shown = cells(lines)
    for i, run in enumerate(runs):
        assert {f"{1234567 + i:,}", f"{100000 + i:,}", run.status} <= shown


def test_key_value_and_eval_tables_wrap_words_never_numbers() -> None:
    final = SimpleNamespace(bpc=1.4612, loss=1.0128, chars=111539, perplexity=2.75,
                            chars_per_s=1234567.0)  # fmt: skip
    result = SimpleNamespace(
        run_dir=Path("runs/lstm-vs-gru/cell=lstm,hidden_size=256,checkpoint_every_s=100000"),
        steps=100000, elapsed_s=300.4, eval_s=12.3, chars_per_s=1234567.0,
        step_chars_per_s=1334567.0, parameters=1234567, final_val=final, interval_evals=3,
        best_val_bpc=1.4431, best_step=96000,
    )  # fmt: skip
    files = SimpleNamespace(files=[("a-long-file-name-of-the-corpus.txt", final)], total=final)
    for width in (40, 80):
        text = " ".join(render(train_table(result), width))
        for number in ("100,000", "1,234,567", "(1,334,567", "111,540", "96,000", "1.4612"):
            assert f" {number} " in text, (width, number)
        for table in (
            eval_table(Path("r"), "val", final),
            eval_files_table(Path("r"), Path("c"), files),
        ):
            assert {"1.0128", "1.4612", "2.750", "111,539", "1,234,567"} <= cells(
                render(table, width)
            )
