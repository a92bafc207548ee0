"""Property-based tests: whatever the input, the result is right or a CharlmError, nothing else.

Lone surrogates: a Python string may hold them and the vocabulary treats them as ordinary code
points (so the round trip below includes them), but a decoded corpus never contains one: strict
decoding refuses them and `data.errors: replace` turns them into U+FFFD.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from charlm.config import SECTIONS, Config, DataConfig, all_keys, dump_yaml, load_config
from charlm.corpus import load_corpus
from charlm.errors import CharlmError
from charlm.vocab import UNKNOWN_CHAR, Vocab

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Every code point, surrogates included (Hypothesis leaves out category Cs unless told).
any_char = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
any_text = st.text(any_char, max_size=60)
# A small alphabet so that repeats, rare characters and overlaps between texts are common.
small_text = st.text(st.sampled_from("ab\n\r\t é😀\ud800\U0010ffff"), max_size=40)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# ------------------------------------------------------------------------------------- vocab
@FUZZ
@given(any_text)
def test_vocab_round_trip(text: str) -> None:
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text)
    assert len(ids) == len(text)
    assert all(0 <= int(i) < len(vocab) for i in ids)
    assert vocab.decode(ids) == text
    # The record survives JSON, as it does inside a checkpoint (an empty one is refused).
    if text:
        assert Vocab.from_dict(json.loads(json.dumps(vocab.to_dict()))) == vocab


@FUZZ
@given(st.one_of(any_text, small_text), st.integers(min_value=1, max_value=4))
def test_rare_characters_share_the_unknown_symbol(text: str, min_count: int) -> None:
    vocab = Vocab.from_text(text, min_count)
    counts = Counter(text)
    for char, n in counts.items():
        assert (char in vocab) == (n >= min_count or char == vocab.unknown_char)
    assert (vocab.unknown_char is not None) == (min_count > 1)
    policy = "replace" if vocab.unknown_char else "error"
    expected = "".join(c if counts[c] >= min_count else UNKNOWN_CHAR for c in text)
    assert vocab.decode(vocab.encode(text, policy)) == expected
    if len(vocab):
        assert Vocab.from_dict(json.loads(json.dumps(vocab.to_dict()))) == vocab


@FUZZ
@given(small_text, small_text, st.sampled_from(["error", "skip", "replace"]))
def test_unknown_policy(vocab_text: str, text: str, policy: str) -> None:
    vocab = Vocab.from_text(vocab_text, 2 if policy == "replace" else 1)
    unseen = [c for c in text if c not in vocab]
    if policy == "error" and unseen:
        with pytest.raises(CharlmError, match="not in the model's vocabulary"):
            vocab.encode(text, policy)
        return
    decoded = vocab.decode(vocab.encode(text, policy))
    if policy == "replace":
        assert decoded == "".join(c if c in vocab else UNKNOWN_CHAR for c in text)
    else:
        assert decoded == "".join(c for c in text if c in vocab)


# ------------------------------------------------------------------------------------ config
def _field_names(section: str) -> list[str]:
    return [key.split(".", 1)[1] for key in all_keys() if key.startswith(section + ".")]


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["lstm", "gru", "cpu", "auto", "cuda", "lf", "keep", "3e-4", "1e400", ""]),
    st.lists(st.integers(), max_size=2),
)
section_bodies = st.one_of(
    scalars,
    st.dictionaries(
        st.one_of(st.sampled_from([n for s in SECTIONS for n in _field_names(s)]), st.text()),
        scalars,
        max_size=5,
    ),
)
yaml_docs = st.dictionaries(
    st.one_of(st.sampled_from([*SECTIONS, "modle", "extra"]), st.integers()),
    section_bodies,
    max_size=4,
).map(lambda d: yaml.safe_dump(d, allow_unicode=True))


def _assert_valid(config: Config, scratch: Path) -> None:
    """A returned config is valid and survives its own YAML dump unchanged."""
    path = scratch / "dumped.yaml"
    path.write_text(dump_yaml(config), encoding="utf-8")
    assert load_config(path) == config


@FUZZ
@given(st.one_of(st.text(max_size=200), yaml_docs))
def test_config_loader_on_any_yaml(scratch: Path, text: str) -> None:
    path = scratch / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        config = load_config(path)
    except CharlmError as e:
        assert str(e) and "\n" not in str(e).strip()
        return
    _assert_valid(config, scratch)


overrides = st.lists(
    st.one_of(
        st.text(max_size=30),
        st.builds(
            lambda k, v: f"{k}={v}",
            st.one_of(st.sampled_from(all_keys()), st.text(max_size=15)),
            st.one_of(st.text(max_size=15), scalars.map(str)),
        ),
    ),
    max_size=5,
)


@FUZZ
@given(overrides)
def test_config_loader_on_any_overrides(scratch: Path, items: list[str]) -> None:
    try:
        config = load_config(None, items)
    except CharlmError as e:
        assert str(e)
        return
    _assert_valid(config, scratch)


# ------------------------------------------------------------------------------------ corpus
ENCODINGS = [
    *["utf-8", "latin-1", "cp1252", "ascii", "utf-16", "utf-16-le", "utf-32", "shift_jis"],
    *["idna", "punycode"],  # codecs that fail without a byte offset
]
corpus_bytes = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda text, enc: text.encode(enc, "replace"),
        st.text(max_size=80),
        st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]),
    ),
)


@FUZZ
@given(
    corpus_bytes,
    st.sampled_from(ENCODINGS),
    st.sampled_from(["strict", "replace"]),
    st.sampled_from(["lf", "keep"]),
)
def test_corpus_loader_on_any_bytes(
    scratch: Path, data: bytes, encoding: str, errors: Any, newline: Any
) -> None:
    path = scratch / "corpus.txt"
    path.write_bytes(data)
    config = DataConfig(corpus=str(path), encoding=encoding, errors=errors, newline=newline)
    try:
        corpus = load_corpus(config)
    except CharlmError as e:
        assert str(path) in str(e)
        return
    text = corpus.text
    assert text and not text.startswith("\ufeff")
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in text)  # never a lone surrogate
    if newline == "lf":
        assert "\r" not in text
    if encoding == "utf-8" and errors == "strict" and newline == "keep":
        assert text == data.decode("utf-8").removeprefix("\ufeff")


# ------------------------------------------------------------------------ checkpoint metadata
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**20), max_value=10**20),
        st.floats(),
        st.text(max_size=8),
        st.sampled_from(["lstm", "gru", "[/x]", "cpu", "fp32", "twenty", "", "\ud800"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _edit(data: st.DataObject, node: Any) -> Any:
    """One random edit somewhere in the JSON tree: replace a value, delete or add a key."""
    if not isinstance(node, (dict, list)) or not node:
        return data.draw(json_values)
    action = data.draw(st.sampled_from(["descend", "replace", "delete", "add"]))
    key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
    if action == "descend":
        node[key] = _edit(data, node[key])
    elif action == "replace":
        node[key] = data.draw(json_values)
    elif action == "delete":
        del node[key]
    elif isinstance(node, dict):
        node[data.draw(st.text(max_size=6))] = data.draw(json_values)
    else:
        node.append(data.draw(json_values))
    return node


@pytest.fixture(scope="module")
def saved_record(trained_run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from charlm.checkpoint import load_checkpoint, step_checkpoints

    loaded = load_checkpoint(step_checkpoints(trained_run / "checkpoints")[-1][1])
    return loaded.record, loaded.tensors


@settings(
    max_examples=int(os.environ.get("FUZZ_N", 200)),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(st.data(), st.integers(1, 3), st.sampled_from(["keep", "drop", "forge"]))
def test_any_edit_of_a_checkpoint_record_is_an_error_or_a_verified_load(
    scratch: Path,
    saved_record: tuple[dict[str, Any], dict[str, Any]],
    data: st.DataObject,
    edits: int,
    digest: str,
) -> None:
    """Whatever the record says, loading, sampling's model and `charlm info` give a one-line
    CharlmError or work; an edit under an intact checksum is always refused."""
    import copy
    import warnings

    from safetensors.torch import save as safetensors_save
    from typer.testing import CliRunner

    from charlm import checkpoint
    from charlm.cli import app
    from charlm.info import describe

    original, tensors = saved_record
    record = copy.deepcopy(original)
    for _ in range(edits):
        record = _edit(data, record)
    if isinstance(record, dict) and digest == "drop":
        record.pop("record_sha256", None)
    if isinstance(record, dict) and digest == "forge":
        record["record_sha256"] = checkpoint.record_digest(record)
    path = scratch / checkpoint.step_name(60)
    text = json.dumps(record)
    path.write_bytes(safetensors_save(tensors, metadata={"charlm": text}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            loaded = checkpoint.load_checkpoint(path)
            model = checkpoint.load_model(path, device="cpu")
        except CharlmError as e:
            assert str(e).startswith(str(path)) and "\n" not in str(e)
            event(f"refused ({digest})")
        else:
            event(f"loaded ({digest})")
            same = json.loads(text) == json.loads(json.dumps(original))
            recorded = record.get("record_sha256")
            if not same:  # no checksum, or one recomputed for the edited record
                assert recorded in (None, checkpoint.record_digest(record))
            checked = recorded is not None and record.get("tensors_sha256") is not None
            assert (loaded.unverified is None) == checked
            assert model.model.vocab_size == len(model.vocab)
        report = describe(path)
    (entry,) = report["checkpoints"]
    assert entry["status"] in ("ok", "unverified", "damaged")
    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code in (0, 1) and not isinstance(result.exception, Exception), result.output
