"""Shell completion for arguments: run folders, YAML configs and preset names.

Called by the shell on every Tab, so each is cheap and torch-free: it lists folders (the one
being typed and two levels below it) and reads no file. When nothing matches, the shells fall
back to plain file-name completion.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

DEPTH = 2  # levels looked into below the folder being typed: runs/, then a sweep's folder
MAX_ENTRIES = 500  # per folder: a huge folder is listed in part rather than slowly
YAML = (".yaml", ".yml")


def _entries(folder: Path, prefix: str = "") -> list[Path]:
    """The entries of `folder` whose names start with `prefix`; hidden ones only if typed."""
    try:
        listed = list(itertools.islice(folder.iterdir(), MAX_ENTRIES))
    except OSError:
        return []
    hidden = prefix.startswith(".")
    return sorted(
        p for p in listed if p.name.startswith(prefix) and (hidden or not p.name.startswith("."))
    )


def _walk(
    incomplete: str, match: Callable[[Path], bool], enter: Callable[[Path], bool]
) -> Iterator[str]:
    """Paths that start with `incomplete` and `match`, written the way the user began them."""
    head = incomplete[: incomplete.rfind("/") + 1]
    level = [(head + p.name, p) for p in _entries(Path(head or "."), incomplete[len(head) :])]
    for depth in range(DEPTH + 1):
        deeper = []
        for text, path in level:
            if match(path):
                yield text
            elif depth < DEPTH and enter(path):
                deeper += [(f"{text}/{p.name}", p) for p in _entries(path)]
        level = deeper


def _is_run(path: Path) -> bool:
    from charlm.runs import is_run_dir

    return path.is_dir() and is_run_dir(path)


def _is_yaml(path: Path) -> bool:
    return path.suffix in YAML and path.is_file()


def complete_run(incomplete: str) -> list[str]:
    """Run folders (those holding a config.yaml), here and in the folders below."""
    return list(_walk(incomplete, _is_run, Path.is_dir))


def _config_files(incomplete: str) -> list[str]:
    """YAML files, not looking into run folders (each holds its resolved config.yaml)."""
    return list(_walk(incomplete, _is_yaml, lambda p: p.is_dir() and not _is_run(p)))


def _presets_then_files(incomplete: str, experiments: bool) -> list[tuple[str, str]]:
    """Preset (or experiment) names with their descriptions, then YAML files; nothing for a
    KEY=VALUE override."""
    from charlm.presets import list_presets

    if "=" in incomplete:
        return []
    files = [(name, "") for name in _config_files(incomplete)]
    if "/" in incomplete:
        return files
    found = list_presets(experiments)
    names = [(p.name, p.description) for p in found if p.name.startswith(incomplete)]
    return [*names, *files]


def complete_config(incomplete: str) -> list[tuple[str, str]]:
    """`charlm train`'s CONFIG: preset names, then YAML files."""
    return _presets_then_files(incomplete, experiments=False)


def complete_experiment(incomplete: str) -> list[tuple[str, str]]:
    """`charlm sweep`'s EXPERIMENT: experiment names, then YAML files."""
    return _presets_then_files(incomplete, experiments=True)


def complete_corpus_name(incomplete: str) -> list[str]:
    """`charlm data fetch`'s NAME: the classic corpora it knows."""
    from charlm.fetch import KNOWN

    return [name for name in KNOWN if name.startswith(incomplete)]
