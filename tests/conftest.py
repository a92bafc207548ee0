"""Shared fixtures: a small synthetic corpus, tiny configs, and one trained tiny run.

Everything here is sized to run in seconds on 2 CPU cores.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from charlm.config import Config, load_config

# Tiny models gain nothing from a second thread, and OpenMP threads spin badly when the two
# cores are shared with other work; one thread keeps the suite fast and steady. Set at import for
# module-scoped fixtures, and again before every test in case one changed it.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def make_text(n_chars: int = 40_000, seed: int = 0) -> str:
    """Deterministic, learnable text: sentences drawn from a small grammar."""
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "my friend", "the old king", "her brother"]
    verbs = ["sees", "likes", "finds", "wants", "keeps"]
    objects = ["the ball", "a red apple", "his hat", "the small house", "a book"]
    parts = []
    size = 0
    while size < n_chars:
        s = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}.\n"
        parts.append(s.capitalize())
        size += len(s)
    return "".join(parts)[:n_chars]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic corpus per test module, for module-scoped runs that tests share."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


def tiny_overrides(corpus: Path, **extra: object) -> list[str]:
    """Overrides that make any config a seconds-long run on `corpus`."""
    base = {
        "data.corpus": str(corpus),
        "model.embedding_dim": 16,
        "model.hidden_size": 32,
        "model.num_layers": 1,
        "train.batch_size": 8,
        "train.seq_len": 32,
        "train.max_steps": 40,
        "train.eval_interval": 20,
        "train.log_interval": 5,
        "train.checkpoint_interval": 20,
        "train.warmup_steps": 5,
        "train.lr": 0.01,
        "train.device": "cpu",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def tiny_config(corpus: Path, **extra: object) -> Config:
    return load_config(None, tiny_overrides(corpus, **extra))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny run shared by the read-only tests (sample, eval, checkpoint loading)."""
    from charlm.training import train

    root = tmp_path_factory.mktemp("trained")
    corpus = root / "corpus.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    run = root / "run"
    train(tiny_config(corpus, **{"train.max_steps": 60}), run)
    return run
