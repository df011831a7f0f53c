#!/usr/bin/env bash
# The miniature SDXS chain and its ControlNets / style LoRA on one GPU in about nine minutes: the
# stages of `python -m trainers.miniature.distill`, independent ones side by side on the one card,
# each with a wall-time budget (max_minutes; cosine LR over that budget) instead of a step count. The stages,
# their inputs, budgets and one-GPU options are trainers/configs/distill_chain.yaml (the table the Python chain
# reads); this script only orders them.
#
#   bash scripts/distill_gpu.sh [RUNS_DIR] [TEACHER]      # default runs/gpu, assets/miniature/teacher
#
# Order: [ControlNet teachers (edges, depth) + style-LoRA teacher] alongside
#        [(pairs -> tiny decoder) + block KD -> MSE baseline + FM warmup -> SSD (3 settings)];
#        the best SSD student (prompt accuracy, then mFID, by the evaluator) becomes RUNS/ssd; then the
#        student ControlNets (KD, then SSD) and the LoRA-SSD; fp16 exports in RUNS/assets.
# Per-stage logs: RUNS/logs/. Figures: docs/results.md; history: docs/notebook/.
set -uo pipefail
RUNS=${1:-runs/gpu}
TEACHER=${2:-assets/miniature/teacher}
mkdir -p "$RUNS/logs"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
PAIRS=${PAIRS:-16384}  # teacher ODE pairs shared by the stages
SCALE=${BUDGET_SCALE:-1}  # multiplies every wall-time budget (a smoke run: BUDGET_SCALE=0.05 PAIRS=64)
START=$(date +%s)
COMMON=(--set all.num_pairs=$PAIRS --set all.checkpoint_every=2000 --set all.validate_every=0
        --set all.log_every=50 --set all.max_steps=100000 --set all.lr_schedule=cosine --set all.warmup_steps=50)

stage() {  # stage NAME [--set ...]: one distill stage under its wall-time budget (distill_chain.yaml), logged
  local name=$1
  shift
  echo "[$(( $(date +%s) - START )) s] start $name"
  python -m trainers.miniature.distill --stages "$name" --teacher "$TEACHER" --runs "$RUNS" --assets "$RUNS/assets" \
    --gpu-budget "$SCALE" "${COMMON[@]}" "$@" >"$RUNS/logs/$name.log" 2>&1
  local rc=$?
  echo "[$(( $(date +%s) - START )) s] end $name rc=$rc"
  return $rc
}

# teacher-side ControlNets and style LoRA: they need only the teacher
stage controlnet_teacher_edges &
stage controlnet_teacher_depth &
stage lora_teacher &

# the chain: the decoder stage makes the 16k teacher pairs while block KD (on world renders) runs
stage decoder &
decoder=$!
stage block_kd
until [ -f "$RUNS/pairs.safetensors" ] || ! kill -0 $decoder 2>/dev/null; do sleep 2; done
stage mse_baseline &
stage fm_warmup
wait  # mse_baseline, and the decoder and teacher-side runs (started earlier, done by now)
stage ssd &
stage ssd_ttur &  # two other SSD settings, scored against ssd below
stage ssd_fm_heavy &
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
stage controlnet_kd_edges &
kd_edges=$!
stage controlnet_kd_depth &
kd_depth=$!
stage lora_ssd --set lora_ssd.num_pairs=$(( PAIRS / 4 )) &
wait $kd_edges $kd_depth
stage controlnet_ssd_edges &
stage controlnet_ssd_depth &
wait
python -m trainers.miniature.distill --stages export_controls --runs "$RUNS" --assets "$RUNS/assets" \
  --teacher "$TEACHER" >"$RUNS/logs/export_controls.log" 2>&1
# the tiny decoder continued on the student's own latents (text, both ControlNets, the LoRA), then shipped again
stage decoder_student
python -m trainers.miniature.distill --stages export --runs "$RUNS" --assets "$RUNS/assets" --teacher "$TEACHER" \
  >"$RUNS/logs/export_decoder_student.log" 2>&1
echo "[$(( $(date +%s) - START )) s] all done"
