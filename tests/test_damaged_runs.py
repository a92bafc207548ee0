"""`charlm runs` and `charlm compare` over damaged run folders: the readable runs are still shown.

A damaged metrics file loses only its bad rows; a run whose config cannot be read is skipped with
one `warning:` line; `compare --plot` into a folder that does not exist is refused, not created.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from charlm.cli import app
from charlm.runs import find_runs, read_metrics

runner = CliRunner()
Damage = Callable[[Path], None]


def _append(data: bytes) -> Damage:
    def damage(run: Path) -> None:
        with (run / "metrics.jsonl").open("ab") as f:
            f.write(data)
        (run / "summary.json").unlink(missing_ok=True)  # the table then reads the metrics

    return damage


def _config(data: bytes) -> Damage:
    def damage(run: Path) -> None:
        (run / "config.yaml").write_bytes(data)

    return damage


METRICS_DAMAGE: list[tuple[str, Damage]] = [
    ("invalid-utf8", _append(b'{"step": 61, "elapsed_s": 9.0, "val_bpc": 2.5}\xff\xfe\n')),
    ("step-not-a-number", _append(b'{"step": "x", "elapsed_s": 1.0}\n')),
    ("step-missing", _append(b'{"elapsed_s": 1.0, "val_bpc": 0.1}\n')),
    ("row-not-an-object", _append(b"[1, 2, 3]\n")),
    ("no-elapsed", _append(b'{"step": 99, "val_bpc": 3.0}\n')),
    ("bpc-not-a-number", _append(b'{"step": 99, "elapsed_s": 5.0, "val_bpc": "low"}\n')),
    ("cut-short", _append(b'{"step": 99, "elap')),
]

CONFIG_DAMAGE: list[tuple[str, Damage, str]] = [
    ("yaml-syntax", _config(b"model: [\n"), "line 2"),
    ("not-utf8", _config(b"\xff\xfe"), "not UTF-8"),
    ("not-a-mapping", _config(b"- 1\n"), "mapping"),
    ("empty", _config(b""), "empty"),
    ("python-tag", _config(b"model: !!python/object/apply:os.system ['true']\n"), "tag"),
]


def _runs(tmp_path: Path, trained_run: Path, damage: Damage) -> Path:
    """A folder holding a good run and a damaged copy of it."""
    root = tmp_path / "runs"
    shutil.copytree(trained_run, root / "good")
    shutil.copytree(trained_run, root / "hurt")
    damage(root / "hurt")
    return root


@pytest.mark.parametrize(
    "damage", [d for _, d in METRICS_DAMAGE], ids=[i for i, _ in METRICS_DAMAGE]
)
def test_damaged_metrics_lose_only_bad_rows(
    tmp_path: Path, trained_run: Path, damage: Damage
) -> None:
    root = _runs(tmp_path, trained_run, damage)
    rows = read_metrics(root / "hurt")
    assert rows and all(isinstance(r["step"], int) for r in rows)
    assert all(isinstance(v, (int, float)) for r in rows for v in r.values())
    for args in (["runs", root], ["compare", root / "good", root / "hurt"]):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        assert result.exception is None
        assert "hurt" in result.stdout and "good" in result.stdout
    hurt = {run.name: run for run in find_runs(root)}["hurt"]
    assert hurt.elapsed_s is not None and hurt.steps is not None


@pytest.mark.parametrize(
    ("damage", "why"), [c[1:] for c in CONFIG_DAMAGE], ids=[c[0] for c in CONFIG_DAMAGE]
)
def test_unreadable_config_skips_that_run_only(
    tmp_path: Path, trained_run: Path, damage: Damage, why: str
) -> None:
    root = _runs(tmp_path, trained_run, damage)
    for args in (["runs", root], ["compare", root / "good", root / "hurt"], ["compare", root]):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("warning: skipped a run: "), result.stderr
        assert "hurt" in lines[0] and "config.yaml" in lines[0] and why in lines[0]
        assert "good" in result.stdout and "hurt" not in result.stdout


def test_runs_json_also_skips(tmp_path: Path, trained_run: Path) -> None:
    root = _runs(tmp_path, trained_run, _config(b"model: [\n"))
    result = runner.invoke(app, ["runs", str(root), "--json"])
    assert result.exit_code == 0
    assert [run["name"] for run in json.loads(result.stdout)] == ["good"]


def test_compare_of_only_unreadable_runs_is_one_error(tmp_path: Path, trained_run: Path) -> None:
    root = _runs(tmp_path, trained_run, _config(b"model: [\n"))
    result = runner.invoke(app, ["compare", str(root / "hurt")])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: nothing to compare")


@pytest.mark.parametrize("where", ["nonexistent/dir/x.png", "file.txt/x.png"])
def test_compare_plot_into_a_missing_folder_is_refused(
    tmp_path: Path, trained_run: Path, where: str
) -> None:
    (tmp_path / "file.txt").write_text("a file\n", encoding="utf-8")
    plot = tmp_path / where
    result = runner.invoke(app, ["compare", str(trained_run), "--plot", str(plot)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --plot"), result.stderr
    assert str(plot.parent) in lines[0]
    assert not (tmp_path / "nonexistent").exists()
    assert result.stdout == ""  # refused before the table


@pytest.mark.parametrize(
    "damage",
    [_append(b'{"step": "x"}\n'), _append(b"\xff\xfe\n")],
    ids=["step-not-a-number", "invalid-utf8"],
)
def test_resume_over_damaged_metrics(tmp_path: Path, trained_run: Path, damage: Damage) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    damage(run)
    result = runner.invoke(app, ["train", "--resume", str(run), "train.max_steps=70", "--quiet"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 0, result.output
    assert max(row["step"] for row in read_metrics(run)) == 70
