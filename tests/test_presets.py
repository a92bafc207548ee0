"""Presets by name: the shipped configs and experiments, from the source tree and a wheel."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from charlm.cli import app
from charlm.errors import CharlmError
from charlm.presets import check_corpus, list_presets, preset_path, presets_dir, resolve_config

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_the_presets_are_the_configs_folder() -> None:
    assert presets_dir() == REPO / "configs"  # run from the source tree
    names = [p.name for p in list_presets()]
    assert names == sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    assert {"default", "tiny", "shakespeare-lstm", "shakespeare-gru"} <= set(names)
    assert [p.name for p in list_presets(experiments=True)] == ["lstm-vs-gru"]
    for preset in [*list_presets(), *list_presets(experiments=True)]:
        assert preset.description and not preset.description.startswith("#"), preset


def test_a_config_argument_is_a_file_first_then_a_preset_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_config("tiny") == str(REPO / "configs/tiny.yaml")
    assert resolve_config("lstm-vs-gru", experiments=True) == str(
        REPO / "configs/experiments/lstm-vs-gru.yaml"
    )
    Path("tiny").write_text("model: {cell: gru}\n")  # a file of that name wins
    assert resolve_config("tiny") == "tiny"
    Path("default").mkdir()  # so does a folder: its error says what it is
    assert resolve_config("default") == "default"
    assert resolve_config("elsewhere/x.yaml") == "elsewhere/x.yaml"  # a path: as given
    assert resolve_config("missing.yaml") == "missing.yaml"
    with pytest.raises(CharlmError, match=r"tyni: config file not found.*shakespeare-lstm, tiny"):
        resolve_config("tyni")
    with pytest.raises(CharlmError, match=r"no experiment has that name.*lstm-vs-gru"):
        preset_path("tiny", experiments=True)


def test_a_missing_classic_corpus_names_the_command_that_fetches_it(tmp_path: Path) -> None:
    with pytest.raises(CharlmError) as info:
        check_corpus("data/tinyshakespeare.txt")
    assert "`charlm data fetch tinyshakespeare` (run in this folder)" in str(info.value)
    with pytest.raises(CharlmError, match=re.escape(f"tinyshakespeare --dest {tmp_path}`,")):
        check_corpus(str(tmp_path / "tinyshakespeare.txt"))
    check_corpus(None)  # the built-in corpus
    check_corpus("data/mine.txt")  # not one fetch knows: the corpus loader says it is missing
    check_corpus("data/*.txt")
    (tmp_path / "tinyshakespeare.txt").write_text("present")
    check_corpus(str(tmp_path / "tinyshakespeare.txt"))


def test_charlm_presets_lists_each_with_its_description() -> None:
    result = runner.invoke(app, ["presets"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for preset in [*list_presets(), *list_presets(experiments=True)]:
        line = next(line for line in lines if line.split()[:1] == [preset.name])
        assert line.endswith(preset.description)
    assert "charlm sweep NAME:" in lines


def test_on_a_terminal_the_preset_list_wraps_each_description_under_itself() -> None:
    from charlm.cli.presets import listing

    configs, experiments = list_presets(), list_presets(experiments=True)
    wrapped = listing(configs, experiments, columns=60)
    assert all(len(line) < 60 for line in "\n".join(wrapped).splitlines())
    assert len("\n".join(wrapped).splitlines()) > len(listing(configs, experiments))
    words = " ".join(" ".join(wrapped).split())
    for preset in [*configs, *experiments]:
        assert f"{preset.name} {' '.join(preset.description.split())}" in words


@pytest.mark.parametrize("argv", [["train", "shakespeare-lstm"], ["sweep", "lstm-vs-gru"]])
def test_a_shakespeare_preset_without_its_corpus_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, argv)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: data/tinyshakespeare.txt: corpus not found")
    assert "charlm data fetch tinyshakespeare" in result.stderr
    assert result.stderr.count("\n") == 1 and not any(tmp_path.iterdir())


def test_every_command_reading_a_missing_classic_corpus_names_the_fetch_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The corpus loader itself gives the hint, so `data prepare` (and eval, the API) do too."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["data", "prepare", "data/tinyshakespeare.txt"])
    assert result.exit_code == 1
    assert result.stderr == (
        "error: data/tinyshakespeare.txt: corpus not found (data.corpus); get it with "
        "`charlm data fetch tinyshakespeare` (run in this folder), or set data.corpus=PATH to a "
        "copy\n"
    )
    result = runner.invoke(app, ["data", "prepare", "data/mine.txt"])
    assert result.stderr == (
        "error: data/mine.txt: corpus not found (data.corpus); expected a file, folder or glob\n"
    )


def test_train_takes_a_preset_by_name_in_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corpus: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["train", "tiny", f"data.corpus={corpus}", "train.max_steps=2", "--out", "run", "-q"]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    recorded = yaml.safe_load((tmp_path / "run/config.yaml").read_text())
    tiny = yaml.safe_load((REPO / "configs/tiny.yaml").read_text())
    assert recorded["model"]["hidden_size"] == tiny["model"]["hidden_size"]
    assert recorded["train"]["max_steps"] == 2


def test_pyproject_lists_every_package_and_ships_configs() -> None:
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "charlm").rglob("__init__.py")
    }
    assert set(setuptools["packages"]) == on_disk | {"charlm.configs"}
    assert setuptools["package-dir"] == {"charlm.configs": "configs"}
    assert setuptools["package-data"]["charlm.configs"] == ["*.yaml", "experiments/*.yaml"]


@pytest.mark.slow
def test_an_installed_wheel_has_the_presets(tmp_path: Path, corpus: Path) -> None:
    """Build a wheel from a copy of the sources, install it into a folder of its own (the
    environment's other packages still serve its dependencies) and use it from an empty one."""
    src, site, work = tmp_path / "src", tmp_path / "site", tmp_path / "work"
    skip = shutil.ignore_patterns("__pycache__", ".charlm-cache")
    for folder in ("charlm", "configs"):
        shutil.copytree(REPO / folder, src / folder, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    build = [*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(tmp_path)]
    subprocess.run(build, check=True, capture_output=True)
    wheel = next(tmp_path.glob("charlm-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    work.mkdir()
    # PYTHONPATH comes before site-packages, so this charlm shadows an editable install.
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}

    def charlm(*args: str) -> subprocess.CompletedProcess[str]:
        command = [str(site / "bin" / "charlm"), *args]
        return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)

    where = subprocess.run(
        [sys.executable, "-c", "import charlm.presets as p; print(p.presets_dir())"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert Path(where.stdout.strip()) == site / "charlm" / "configs"
    listed = charlm("presets")
    assert listed.returncode == 0, listed.stderr
    for name in ("default", "tiny", "shakespeare-lstm", "gpu-gru", "lstm-vs-gru"):
        assert f"  {name} " in listed.stdout
    missing = charlm("train", "shakespeare-lstm")
    assert missing.returncode == 1 and "charlm data fetch tinyshakespeare" in missing.stderr
    trained = charlm("train", "tiny", f"data.corpus={corpus}", "train.max_steps=2", "--out", "r")
    assert trained.returncode == 0, trained.stderr
    assert (work / "r/config.yaml").is_file() and (work / "r/summary.json").is_file()
