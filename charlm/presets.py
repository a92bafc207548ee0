"""Presets: the configs and sweep experiments that ship with charlm, used by name.

The one copy of each lives in the repository's configs/ folder (experiments in
configs/experiments/). A wheel installs that folder as charlm/configs/ (see pyproject.toml), so
`charlm train shakespeare-lstm` works from any folder; a source checkout (editable install, or
PYTHONPATH pointing at it) reads configs/ directly. Torch-free: `charlm presets` and shell
completion use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from charlm.errors import CharlmError

SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Preset:
    name: str
    path: Path
    description: str  # the file's first comment line


def presets_dir() -> Path:
    """charlm/configs/ in an installed wheel, else the source tree's configs/."""
    package = Path(__file__).resolve().parent
    installed = package / "configs"
    return installed if installed.is_dir() else package.parent / "configs"


def list_presets(experiments: bool = False) -> list[Preset]:
    """The shipped configs (or, with `experiments`, the sweep experiments), sorted by name."""
    folder = presets_dir() / "experiments" if experiments else presets_dir()
    return [Preset(p.stem, p, describe(p)) for p in sorted(folder.glob("*.yaml"))]


def describe(path: Path) -> str:
    """A YAML's first comment line: every preset opens with one saying what it is for."""
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                return line.lstrip("#").strip()
            if line.strip():
                break
    return ""


def preset_path(name: str, experiments: bool = False) -> Path:
    """The file of the preset `name`; an unknown name is an error listing the known ones."""
    known = {p.name: p.path for p in list_presets(experiments)}
    if name not in known:
        what = "experiment" if experiments else "preset"
        raise CharlmError(
            f"{name}: config file not found, and no {what} has that name; expected a YAML file "
            f"or one of {', '.join(known)} (`charlm presets` lists them)"
        )
    return known[name]


def resolve_config(arg: str, experiments: bool = False) -> str:
    """A CONFIG (or EXPERIMENT) argument: anything that exists, or reads as a path, stays as
    given; a bare name that is not there is looked up among the presets."""
    if Path(arg).exists() or "/" in arg or arg.endswith(SUFFIXES):
        return arg
    return str(preset_path(arg, experiments))


def check_corpus(corpus: str | None) -> None:
    """Refuse a missing classic corpus (the Tiny Shakespeare presets' data/tinyshakespeare.txt)
    before anything starts, with the command that fetches it to that very path."""
    from charlm.fetch import fetch_hint

    if not corpus or any(ch in corpus for ch in "*?[") or Path(corpus).exists():
        return
    hint = fetch_hint(corpus)
    if hint is not None:
        raise CharlmError(f"{corpus}: corpus not found (data.corpus); {hint}")
