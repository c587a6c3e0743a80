#!/usr/bin/env bash
# The accelerator checks of issues 4 and 5, in one go (about 5 minutes on an H100 / H200):
#   realtime_*  the paper's protocol (36 frames, 6+6 blocks, batch 1), fp32 and bf16, three
#               rendering modes (frame by frame; forecast blocks in one call; whole blocks), and
#               frame by frame with the source encoded in every call (realtime_frame_uncached)
#   pipeline    100 sampled futures x 24 frames at 256x256 for one clip, end to end
#   forecast    100 closed-loop VRNN samples of a 12-12 window (authors' sizes): vmap vs loop vs eager
#   fomm_*      detector and generator per frame, fp32 and bf16, batch 1
# Usage: OUT=results_dir PY=python [STEPS="realtime_frame pipeline"] bash scripts/gpu_checks.sh
# Results: one JSON per step in $OUT (and the printed tables on stdout).
set -u
PY=${PY:-python}
OUT=${OUT:-runs/gpu_checks}
STEPS=${STEPS:-"realtime_frame realtime_frame_uncached realtime_forecast_block realtime_block pipeline forecast fomm_fp32 fomm_bf16"}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
declare -A ARGS=(
  [realtime_frame]="realtime --render frame --repeats 10"
  [realtime_frame_uncached]="realtime --render frame --repeats 10 --no-source_cache --dtypes float32"
  [realtime_forecast_block]="realtime --render forecast_block --repeats 10"
  [realtime_block]="realtime --render block --repeats 10"
  [pipeline]="pipeline --samples 100 --horizon 12-12 --chunk_size 16 --repeats 3"
  [forecast]="forecast --repeats 20"
  [fomm_fp32]="fomm --batch 1 --repeats 20"
  [fomm_bf16]="fomm --batch 1 --repeats 20 --dtype bfloat16"
)
nvidia-smi -L 2>/dev/null
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"
for name in $STEPS; do
  echo "=== $name ($(date +%T))"
  # each step has its own time limit and never stops the rest; XLA's timer warnings filtered
  timeout 150 "$PY" -m eval.bench ${ARGS[$name]} --out "$OUT/$name.json" 2>&1 | grep -v "cuda_timer.cc"
  echo "=== $name exit ${PIPESTATUS[0]}"
done
