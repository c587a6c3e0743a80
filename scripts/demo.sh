#!/usr/bin/env bash
# The kpflow demo: the whole system on generated videos (about nine minutes on 2 CPU cores).
#   1. write a synthetic video dataset (64x64 mp4 clips of two "identities", train/ and test/; the
#      "bold" scene: two large striped ellipses over a smooth background, kpflow/data/synthetic_video.py),
#   2. train a tiny FOMM on it for a few minutes (stage 1; configs/fomm_vox.py:tiny at a 5x higher
#      learning rate, without colour jitter, scored on every frame of the 4 test clips),
#   3. extract every clip's keypoints with it (what a sender transmits),
#   4. train a VRNN and a GRU-NF on the training clips' keypoints (stage 2): their :cpu configs,
#      narrower and for a short schedule (configs/demo.py),
#   5. score them on the test clips' keypoints against hold-last, linear and random-walk baselines,
#   6. render the test clips in the 6-6 streaming schedule (6 frames sent, 6 forecast) with FOMM
#      and each forecaster, and score the videos: tables, frame grid, ratio density, sample GIFs,
#   7. a loopback call, then one line: the FOMM's test reconstruction error against copying the
#      source frame (from its training log, eval.fomm_summary).
# Usage: bash scripts/demo.sh   (or make demo). DEMO_OUT=DIR changes the output folder, PY the
# python, DEMO_FOMM_MINUTES the FOMM training budget (default 5).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY="${PY:-.venv/bin/python}"
if [[ ! -x "$PY" ]]; then
  echo "error: $PY not found; run 'make demo' (it creates .venv) or set PY=/path/to/python" >&2
  exit 1
fi
OUT="${DEMO_OUT:-demo_out}"
FOMM_MINUTES="${DEMO_FOMM_MINUTES:-5}"
MODELS=(vrnn grunf)

step() { printf '\n== %s\n' "$*"; }

step "synthetic videos -> $OUT/videos/{train,test}"
"$PY" -m kpflow.data.synthetic_video --out "$OUT/videos" --num_train 10 --num_test 4 --num_frames 60 --size 64 --seed 0 \
  --scene bold

# :tiny's 2e-4 (the official rate) leaves the generator's output noise after a few CPU minutes; at
# 1e-3 it follows the driving frames within about 100 steps. Colour jitter off: generated colours
# need no lighting invariance. The evaluation covers all 60 frames of the 4 test clips.
step "train a tiny FOMM for $FOMM_MINUTES minutes -> $OUT/fomm"
"$PY" -m train.fomm --config configs/fomm_vox.py:tiny --workdir "$OUT/fomm" \
  --config.data.dir="$OUT/videos" --config.train.max_minutes="$FOMM_MINUTES" --config.train.image_every=100 \
  --config.train.lr_generator=1e-3 --config.train.lr_kp_detector=1e-3 \
  --config.train.eval_every=100 --config.train.eval_clips=4 --config.train.eval_frames=60 \
  --config.data.augmentation.jitter_param.brightness=0 --config.data.augmentation.jitter_param.contrast=0 \
  --config.data.augmentation.jitter_param.saturation=0 --config.data.augmentation.jitter_param.hue=0

step "extract keypoints -> $OUT/keypoints/{train,test}"
"$PY" -m eval.extract_keypoints --fomm "$OUT/fomm" --videos "$OUT/videos" --out "$OUT/keypoints" --overwrite

for m in "${MODELS[@]}"; do
  step "train $m on the extracted keypoints -> $OUT/$m"
  "$PY" -m train.forecaster --config "configs/demo.py:$m" --workdir "$OUT/$m" \
    --config.data.kind=npz --config.data.dir="$OUT/keypoints/train"
done

for m in "${MODELS[@]}"; do
  step "keypoint evaluation of $m -> $OUT/${m}_eval.json"
  "$PY" -m eval.forecast --workdir "$OUT/$m" --data_dir "$OUT/keypoints/test" --out "$OUT/${m}_eval.json"
done
evals=()
for m in "${MODELS[@]}"; do evals+=("$OUT/${m}_eval.json"); done
"$PY" -m eval.compare "${evals[@]}" --out "$OUT/comparison.md"

step "video evaluation (reconstruction, 6-6) -> $OUT/video"
forecasters=()
for m in "${MODELS[@]}"; do forecasters+=(--forecaster "$OUT/$m"); done
"$PY" -m eval.video --fomm "$OUT/fomm" "${forecasters[@]}" --videos "$OUT/videos" --mode reconstruction \
  --horizon 6-6 --samples 20 --top_k 5 --out "$OUT/video"

step "a loopback call (both ends over local WebRTC, 10 % bursty loss) -> $OUT/call"
mkdir -p "$OUT/call"
test_video=$(ls "$OUT/videos/test/"* | head -n 1)
"$PY" -m kpflow.call loopback --fomm "$OUT/fomm" --video "$test_video" --codec_fit "$OUT/keypoints/train" \
  --loss 0.1 --burst 3 --out "$OUT/call/call.mp4" --stats "$OUT/call/stats.json"
"$PY" -c "from kpflow.call.app import frame_strip; frame_strip('$OUT/call/call.mp4', '$OUT/call/strip.png')"

step "done"
fomm_line=$("$PY" -m eval.fomm_summary "$OUT/fomm")
cat <<MSG
Results in $OUT/:
  call/call.mp4, stats.json  a loopback call of the first test video: what the receiver showed, its
                             statistics (kbps, forecast share, keypoint error, latency); strip.png
  video/tables.md            rendered-video scores: FOMM, hold-last and each model (MAE, SSIM, JEDi),
                             and the diversity table (APD, MAE, SSIM, APD/MAE ratio, best/mean of S)
  video/frames.png           ground truth / FOMM without forecasting / one row per model
  video/samples_*.gif        ground truth and sampled futures side by side (red bar: forecast frames)
  video/ratio_density.png    density of the per-video APD/MAE ratios
  comparison.md              keypoint-level scores of the models and baselines (papers' min-max units)
  fomm/                      the FOMM run: checkpoints, curves.png, samples/
$(for m in "${MODELS[@]}"; do
  printf '  %-26s %s\n' "$m/" "forecaster run: checkpoints, metrics.jsonl, loss.png"
done)
  videos/, keypoints/        the generated clips and their extracted keypoints

$fomm_line
MSG
