#!/usr/bin/env bash
# The kpflow demo, end to end on synthetic keypoints (a few minutes on 2 CPU cores):
#   1. write a synthetic test folder (other clips than the ones the models train on),
#   2. train a tiny VRNN and a tiny GRU-NF (configs/demo.py; training data is regenerated in memory),
#   3. evaluate each against hold-last, linear and random-walk baselines on the test folder,
#   4. put the two evaluations side by side in one table.
# Usage: bash scripts/demo.sh   (or make demo). DEMO_OUT=DIR changes the output folder, PY the python.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY="${PY:-.venv/bin/python}"
if [[ ! -x "$PY" ]]; then
  echo "error: $PY not found; run 'make demo' (it creates .venv) or set PY=/path/to/python" >&2
  exit 1
fi
OUT="${DEMO_OUT:-demo_out}"
MODELS=(vrnn grunf)

step() { printf '\n== %s\n' "$*"; }

step "synthetic test data -> $OUT/test_data"
"$PY" -m kpflow.data.make_synthetic --out "$OUT/test_data" --seed 1

for m in "${MODELS[@]}"; do
  step "train $m -> $OUT/$m"
  "$PY" -m train.forecaster --config "configs/demo.py:$m" --workdir "$OUT/$m"
done

for m in "${MODELS[@]}"; do
  step "evaluate $m -> $OUT/${m}_eval.json"
  "$PY" -m eval.forecast --workdir "$OUT/$m" --data_dir "$OUT/test_data" --out "$OUT/${m}_eval.json"
done

step "compare -> $OUT/comparison.md"
evals=()
for m in "${MODELS[@]}"; do evals+=("$OUT/${m}_eval.json"); done
"$PY" -m eval.compare "${evals[@]}" --out "$OUT/comparison.md"

step "done"
cat <<MSG
Results in $OUT/:
  comparison.md              models and baselines side by side (papers' min-max units)
$(for m in "${MODELS[@]}"; do
  printf '  %-26s %s\n' "${m}_eval.{json,md,png}" "scores, table and sampled trajectories of $m"
  printf '  %-26s %s\n' "$m/" "training run: checkpoints, metrics.jsonl, loss.png"
done)
  test_data/                 the synthetic test clips (.npz, the shared keypoint format)
MSG
