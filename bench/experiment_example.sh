#!/usr/bin/env bash
# The worked example of docs/experiments.md: the LSTM vs GRU sweep at the experiment's own
# five-minute budget on Tiny Shakespeare, its comparison table, and the plot into docs/img/.
#
#   bench/experiment_example.sh [CORPUS [OUT [KEY=VALUE...]]]
#
# CORPUS defaults to data/tinyshakespeare.txt (see data/README.md), OUT to runs/lstm-vs-gru, both
# relative to the checkout; KEY=VALUE overrides go to every run (e.g. train.device=cpu). Two runs
# of five minutes each, plus start-up and the final evals: about 11 minutes. Re-running skips
# the finished runs.
# Runs with the `charlm` on PATH; set CHARLM (e.g. CHARLM="python -m charlm") to use another.
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${1:-data/tinyshakespeare.txt}
out=${2:-runs/lstm-vs-gru}
shift $(($# < 2 ? $# : 2))
charlm=${CHARLM:-charlm}

echo "\$ charlm sweep configs/experiments/lstm-vs-gru.yaml data.corpus=$corpus${*:+ $*} --out $out"
$charlm sweep configs/experiments/lstm-vs-gru.yaml "data.corpus=$corpus" "$@" --out "$out"
echo "\$ charlm compare $out --plot docs/img/lstm-vs-gru.png"
$charlm compare "$out" --plot docs/img/lstm-vs-gru.png
