#!/usr/bin/env bash
# The miniature SDXS chain and its ControlNets / style LoRA on one GPU in about nine minutes: the
# stages of `python -m trainers.miniature.distill`, independent ones side by side on the one card,
# each with a wall-time budget (max_minutes; cosine LR over that budget) instead of a step count.
#
#   bash scripts/distill_gpu.sh [RUNS_DIR] [TEACHER]      # default runs/gpu, assets/miniature/teacher
#
# Order: [ControlNet teachers (edges, depth) + style-LoRA teacher] alongside
#        [(pairs -> tiny decoder) + block KD -> MSE baseline + FM warmup -> SSD (3 settings)];
#        the best SSD student (prompt accuracy, then mFID, by the evaluator) becomes RUNS/ssd; then the
#        student ControlNets (KD, then SSD) and the LoRA-SSD; fp16 exports in RUNS/assets.
# Per-stage logs: RUNS/logs/. Figures of the session that ran it: README "Results".
set -uo pipefail
RUNS=${1:-runs/gpu}
TEACHER=${2:-assets/miniature/teacher}
mkdir -p "$RUNS/logs"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
PAIRS=${PAIRS:-16384}  # teacher ODE pairs shared by the stages
SCALE=${BUDGET_SCALE:-1}  # multiplies every wall-time budget (a smoke run: BUDGET_SCALE=0.05 PAIRS=64)
START=$(date +%s)
scaled() { awk "BEGIN { print $1 * $SCALE }"; }
COMMON=(--set all.num_pairs=$PAIRS --set all.checkpoint_every=2000 --set all.validate_every=0
        --set all.log_every=50 --set all.max_steps=100000 --set all.lr_schedule=cosine --set all.warmup_steps=50)

stage() {  # stage NAME MINUTES [--set ...]: one distill stage under a wall-time budget, logged
  local name=$1 minutes=$2
  shift 2
  echo "[$(( $(date +%s) - START )) s] start $name (${minutes} min)"
  python -m trainers.miniature.distill --stages "$name" --teacher "$TEACHER" --runs "$RUNS" --assets "$RUNS/assets" \
    "${COMMON[@]}" --set "$name.max_minutes=$(scaled "$minutes")" "$@" >"$RUNS/logs/$name.log" 2>&1
  local rc=$?
  echo "[$(( $(date +%s) - START )) s] end $name rc=$rc"
  return $rc
}

ssd_variant() {  # ssd_variant NAME [--set ...]: the SSD method with other settings, in RUNS/ssd_NAME
  local name=$1
  shift
  python -m trainers.methods.ssd --config trainers/configs/ssd_miniature.yaml --set teacher="$TEACHER" \
    --set student="$RUNS/fm_warmup/final" --set vae="$RUNS/decoder/final" --set pair_cache="$RUNS/pairs.safetensors" \
    --set num_pairs="$PAIRS" --set run_dir="$RUNS/ssd_$name" --set max_steps=100000 --set max_minutes="$(scaled 1.25)" \
    --set checkpoint_every=2000 --set validate_every=0 --set log_every=50 --set batch_size=64 "$@" \
    >"$RUNS/logs/ssd_$name.log" 2>&1
  echo "[$(( $(date +%s) - START )) s] end ssd_$name rc=$?"
}

# teacher-side ControlNets and style LoRA: they need only the teacher
stage controlnet_teacher_edges 2.5 --set controlnet_teacher_edges.batch_size=64 &
stage controlnet_teacher_depth 2.5 --set controlnet_teacher_depth.batch_size=64 &
stage lora_teacher 2.0 --set lora_teacher.batch_size=64 &

# the chain: the decoder stage makes the 16k teacher pairs while block KD (on world renders) runs
stage decoder 1.5 --set decoder.batch_size=64 --set decoder.latent_source=pairs &
decoder=$!
stage block_kd 2.25 --set block_kd.batch_size=256 --set block_kd.lr=5e-4
until [ -f "$RUNS/pairs.safetensors" ] || ! kill -0 $decoder 2>/dev/null; do sleep 2; done
stage mse_baseline 0.9 --set mse_baseline.batch_size=256 --set mse_baseline.lr=2e-4 &
stage fm_warmup 0.9 --set fm_warmup.batch_size=256 --set fm_warmup.lr=2e-4
wait  # mse_baseline, and the decoder and teacher-side runs (started earlier, done by now)
stage ssd 1.25 --set ssd.batch_size=64 --set ssd.lr_schedule=constant &
ssd_variant ttur --set lr=2e-5 --set online_lr=1e-4 --set student_every=5 --set real_guidance=2.0 &
ssd_variant fm_heavy --set lr=2e-5 --set lambda_fm_end=5.0 --set alpha_start=0.5 --set alpha_end=0.3 &
wait

# pick the SSD student by the evaluator (128 images, one step) and note the KD / baseline rows
for run in ssd ssd_ttur ssd_fm_heavy mse_baseline fm_warmup; do
  [ -d "$RUNS/$run/final" ] && python -m trainers.miniature.evaluate --model "$RUNS/$run/final" --n "${EVAL_N:-128}" \
    --json "$RUNS/logs/eval_$run.json" >"$RUNS/logs/eval_$run.log" 2>&1 &
done
[ -d "$RUNS/block_kd/final" ] && python -m trainers.miniature.evaluate --model "$RUNS/block_kd/final" --n "${EVAL_N:-128}" \
  --steps 25 --cfg 5 --json "$RUNS/logs/eval_block_kd.json" >"$RUNS/logs/eval_block_kd.log" 2>&1 &
wait
python - "$RUNS" <<'PY'
import json, shutil, sys
from pathlib import Path
runs = Path(sys.argv[1])
scores = {}
for name in ("ssd", "ssd_ttur", "ssd_fm_heavy"):
    f = runs / "logs" / f"eval_{name}.json"
    if f.is_file():
        row = json.loads(f.read_text())
        scores[name] = (row["prompt_accuracy"], -row["mfid"])
print("SSD candidates (prompt accuracy, -mFID):", scores)
best = max(scores, key=scores.get) if scores else None
if best and best != "ssd":
    shutil.move(runs / "ssd", runs / "ssd_default")
    shutil.copytree(runs / best, runs / "ssd")
(runs / "logs" / "ssd_choice.json").write_text(json.dumps({"chosen": best, "scores": scores}, indent=2))
PY
python -m trainers.miniature.distill --stages export --runs "$RUNS" --assets "$RUNS/assets" --teacher "$TEACHER" \
  >"$RUNS/logs/export.log" 2>&1

# the student's ControlNets (feature KD, then SSD) and the LoRA-SSD, on the chosen one-step student
stage controlnet_kd_edges 1.0 --set controlnet_kd_edges.batch_size=64 --set controlnet_kd_edges.lr=1e-3 &
kd_edges=$!
stage controlnet_kd_depth 1.0 --set controlnet_kd_depth.batch_size=64 --set controlnet_kd_depth.lr=1e-3 &
kd_depth=$!
stage lora_ssd 1.25 --set lora_ssd.num_pairs=$(( PAIRS / 4 )) --set lora_ssd.batch_size=32 &
wait $kd_edges $kd_depth
stage controlnet_ssd_edges 0.6 --set controlnet_ssd_edges.batch_size=32 --set controlnet_ssd_edges.lr=1e-4 \
  --set controlnet_ssd_edges.online_lr=1e-4 &
stage controlnet_ssd_depth 0.6 --set controlnet_ssd_depth.batch_size=32 --set controlnet_ssd_depth.lr=1e-4 \
  --set controlnet_ssd_depth.online_lr=1e-4 &
wait
python -m trainers.miniature.distill --stages export_controls --runs "$RUNS" --assets "$RUNS/assets" \
  --teacher "$TEACHER" >"$RUNS/logs/export_controls.log" 2>&1
# the tiny decoder continued on the student's own latents (text, both ControlNets, the LoRA), then shipped again
stage decoder_student 0.75 --set decoder_student.batch_size=64
python -m trainers.miniature.distill --stages export --runs "$RUNS" --assets "$RUNS/assets" --teacher "$TEACHER" \
  >"$RUNS/logs/export_decoder_student.log" 2>&1
echo "[$(( $(date +%s) - START )) s] all done"
