"""The five-minute race: val loss after a fixed training time, charlm against a plain loop.

The plain loop is the field's usual recipe, written out: embedding 64 -> nn.LSTM/nn.GRU 2x256 ->
linear, contiguous streams with the state carried, Adam lr 3e-3 with cosine decay over the budget
to lr/20, clip 1.0, batch 32, seq 128. It is scored at each mark (the clock paused while it is).
charlm trains a preset (plus any overrides) with `train.max_time` = the budget, as a user would.
Both are scored the same way: the first 100,000 characters of the val split (the last 10% of the
corpus), as 20 streams with the hidden state carried, in nats per character.

    python bench/race.py [CORPUS] --cell lstm --budget 300 --marks 60,120,300 \
        [--preset configs/shakespeare-lstm.yaml] [--set train.lr=5e-3 ...] [--seeds 0,1,2] \
        [--charlm-marks]

The plain loop's cosine runs over the whole budget and is scored at each mark on the way. charlm is
trained once for the budget, or with --charlm-marks once per mark with `train.max_time` = that mark
(what a user racing 60 s would do), or once per --charlm-budgets entry (to add marks to a race
whose full-budget charlm runs exist). With several seeds a last table gives each mean and spread.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import DEFAULT_CORPUS, ROOT, VAL_CHARS, VAL_STREAMS, read_corpus, train_in_child

from charlm.evaluate import evaluate_ids
from charlm.model import State
from charlm.runs import read_metrics, read_summary
from charlm.vocab import Vocab


class PlainLM(torch.nn.Module):
    """Embedding -> nn.LSTM/nn.GRU -> linear, torch's modules as they come (no charlm kernels).

    Built in CharLM's order, so a seed gives both the same initial weights."""

    def __init__(self, cell: str, vocab_size: int) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, 64)
        rnn = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
        self.rnn = rnn(64, 256, 2, batch_first=True)
        self.head = torch.nn.Linear(256, vocab_size)

    def init_state(self, batch: int, device: torch.device) -> State:
        count = 2 if isinstance(self.rnn, torch.nn.LSTM) else 1
        return tuple(torch.zeros(2, batch, 256, device=device) for _ in range(count))

    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if isinstance(self.rnn, torch.nn.LSTM):
            out, new = self.rnn(self.embed(ids), state)
        else:
            out, h = self.rnn(self.embed(ids), None if state is None else state[0])
            new = (h,)
        return self.head(out), tuple(new)


def plain_loop(text: str, cell: str, budget: float, marks: list[float], seed: int) -> dict:
    torch.manual_seed(seed)
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text).astype(np.int64)
    n_train = len(ids) - round(len(ids) * 0.1)
    train_ids, val_ids = torch.from_numpy(ids[:n_train]), ids[n_train:][:VAL_CHARS]
    model = PlainLM(cell, len(vocab))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch, seq = 32, 128
    stream_len = len(train_ids) // batch
    streams = train_ids[: batch * stream_len].view(batch, stream_len)
    state, pos, steps, trained = None, 0, 0, 0.0
    scores: dict[float, float] = {}
    pending = sorted(marks)
    while pending:
        start = time.perf_counter()
        lr = 3e-3 / 20 + (3e-3 - 3e-3 / 20) * 0.5 * (
            1 + math.cos(math.pi * min(trained / budget, 1))
        )
        for g in opt.param_groups:
            g["lr"] = lr
        if pos + seq + 1 > stream_len:
            pos, state = 0, None
        x, y = streams[:, pos : pos + seq], streams[:, pos + 1 : pos + seq + 1]
        pos += seq
        logits, state = model(x, state)
        state = tuple(s.detach() for s in state)
        loss = F.cross_entropy(logits.reshape(-1, len(vocab)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps += 1
        trained += time.perf_counter() - start
        while pending and trained >= pending[0]:
            scores[pending.pop(0)] = evaluate_ids(model, val_ids, VAL_STREAMS).loss
            model.train()
    return {"scores": scores, "steps": steps, "chars_per_s": steps * batch * seq / trained}


def charlm_run(corpus: Path, preset: Path, sets: list[str], budget: float, seed: int) -> dict:
    """Train the preset through `charlm train` in a child process.

    A child of its own, because the trainer changes process-wide state (it has glibc keep freed
    memory, `charlm.cpu.memory.keep_freed_memory`) that would otherwise speed up the plain loops of
    later seeds in this process, which are meant to run as a user's own script would."""
    overrides = [
        f"data.corpus={corpus}",
        f"train.max_time={budget}",
        "train.max_steps=null",
        f"train.eval_chars={VAL_CHARS}",
        f"train.eval_streams={VAL_STREAMS}",
        f"train.seed={seed}",
        "train.device=cpu",
        *sets,
    ]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        train_in_child([str(preset), *overrides], run, f"race: charlm seed {seed}")
        last = [r for r in read_metrics(run) if "val_loss" in r][-1]
        summary = read_summary(run)
    assert summary is not None, f"{run}: no summary.json"
    return {
        "score": last["val_loss"],
        "steps": summary.steps,
        "chars_per_s": summary.chars_per_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    parser.add_argument("--budget", type=float, default=300)
    parser.add_argument("--marks", default="60,120,300")
    parser.add_argument("--preset", type=Path, default=None)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument("--charlm-marks", action="store_true", help="one charlm run per mark")
    parser.add_argument(
        "--charlm-budgets", default=None, help="charlm's budgets, e.g. 60,120 (overrides marks)"
    )
    args = parser.parse_args()
    preset = args.preset or ROOT / "configs" / f"shakespeare-{args.cell}.yaml"
    marks = [float(m) for m in args.marks.split(",") if float(m) <= args.budget]
    text = read_corpus(args.corpus)
    print(f"| who | seed | budget s | steps | chars/s | val loss (nats/char) at {args.marks} s |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = marks if args.charlm_marks else [args.budget]
    if args.charlm_budgets:
        budgets = [float(b) for b in args.charlm_budgets.split(",")]
    label = f"charlm {preset.name} {' '.join(args.sets)}".strip()
    results: dict[tuple[str, float], list[float]] = {}
    for seed in seeds:
        if not args.skip_plain:
            plain = plain_loop(text, args.cell, args.budget, marks, seed)
            for m in marks:
                results.setdefault(("plain loop", m), []).append(plain["scores"][m])
            shown = ", ".join(f"{plain['scores'][m]:.3f}" for m in marks)
            print(
                f"| plain loop {args.cell} | {seed} | {args.budget:g} | {plain['steps']:,} | "
                f"{plain['chars_per_s']:,.0f} | {shown} |",
                flush=True,
            )
        for budget in budgets:
            ours = charlm_run(args.corpus, preset, args.sets, budget, seed)
            results.setdefault((label, budget), []).append(ours["score"])
            print(
                f"| {label} | {seed} | {budget:g} | {ours['steps']:,} | "
                f"{ours['chars_per_s']:,.0f} | {ours['score']:.3f} (at {budget:g}) |",
                flush=True,
            )
    if len(seeds) > 1:
        print(f"\n| who | seconds | mean val loss over seeds {args.seeds} | min | max |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for (who, at), scores in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            print(
                f"| {who} | {at:g} | {statistics.mean(scores):.3f} | {min(scores):.3f} | "
                f"{max(scores):.3f} |"
            )


if __name__ == "__main__":
    main()
