"""Moving averages of the weights against the latest weights, at a fixed number of steps.

One run of a preset per seed, `train.max_steps` = --steps and the preset's own averaging off, so
the run trains exactly as it would without `train.ema_decay` (the average never feeds back into
training). Beside it the script keeps one average per --decays value, all over the same
trajectory and updated as the trainer's are (from the initial weights, by
`charlm.training.update_average`, --decays being the cap); at the end it scores the
latest weights and each average like bench/race.py (the first 100,000 val characters as 20
carried-state streams, nats per character) and prints one table.

    python bench/ema_decays.py [CORPUS] --preset configs/shakespeare-gru.yaml --steps 3000 \
        [--seeds 0,1] [--decays 0.99,0.995,0.998] [--threads 2] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import DEFAULT_CORPUS, VAL_CHARS, VAL_STREAMS, read_corpus  # noqa: E402

from charlm.config import Config, load_config  # noqa: E402 (after the path line)
from charlm.evaluate import evaluate_ids  # noqa: E402
from charlm.rundir import prepare_run_dir  # noqa: E402
from charlm.training import Trainer, update_average  # noqa: E402


class AveragingTrainer(Trainer):
    """A trainer that also keeps, untouched by training, one weight average per decay."""

    def __init__(self, config: Config, run_dir: Path, decays: list[float]) -> None:
        super().__init__(config, run_dir)
        self.side = {d: [p.detach().clone() for p in self.model.parameters()] for d in decays}

    def train_step(self) -> float:
        lr = super().train_step()
        weights = [p.detach() for p in self.model.parameters()]
        for cap, average in self.side.items():
            update_average(average, weights, cap, self.step - 1)  # the (0-based) step just taken
        return lr

    def scores(self) -> dict[str, float]:
        """Val loss of the latest weights and of each average."""
        val = self.data.splits.val[:VAL_CHARS]
        out = {"latest": evaluate_ids(self.model, val, VAL_STREAMS).loss}
        probe = copy.deepcopy(self.model)
        for decay, average in self.side.items():
            with torch.no_grad():
                for p, a in zip(probe.parameters(), average, strict=True):
                    p.copy_(a)
            out[f"ema {decay}"] = evaluate_ids(probe, val, VAL_STREAMS).loss
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", nargs="?", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--preset", type=Path, default=ROOT / "configs" / "shakespeare-gru.yaml")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--decays", default="0.99,0.995,0.998")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE")
    args = parser.parse_args()
    read_corpus(args.corpus)  # a clear error before any work
    if args.threads:
        torch.set_num_threads(args.threads)
    decays = [float(d) for d in args.decays.split(",")]
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        overrides = [
            f"data.corpus={args.corpus}",
            f"train.max_steps={args.steps}",
            "train.max_time=null",
            "train.ema_decay=null",
            f"train.eval_chars={VAL_CHARS}",
            f"train.eval_streams={VAL_STREAMS}",
            f"train.seed={seed}",
            "train.device=cpu",
            *args.sets,
        ]
        config = load_config(args.preset, overrides)
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = prepare_run_dir(Path(tmp) / "run")
            trainer = AveragingTrainer(config, run_dir, decays)
            trainer.run()
            rows.append((seed, trainer.scores()))
        print(
            f"seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in rows[-1][1].items()), flush=True
        )
    names = list(rows[0][1])
    label = " ".join([args.preset.name, *args.sets])
    print(f"\n{label}, {args.steps} steps, torch threads {torch.get_num_threads()}\n")
    print("| seed | " + " | ".join(names) + " |")
    print("| ---: |" + " ---: |" * len(names))
    for seed, scores in rows:
        print(f"| {seed} | " + " | ".join(f"{scores[n]:.4f}" for n in names) + " |")
    if len(rows) > 1:
        means = [sum(s[n] for _, s in rows) / len(rows) for n in names]
        print("| mean | " + " | ".join(f"{m:.4f}" for m in means) + " |")


if __name__ == "__main__":
    main()
