#!/usr/bin/env bash
# One call on a lent GPU machine (the workplace's `device` tool), prepared so that a single try works:
# installs the carried wheels (.whl/, e.g. diffusers), runs the work under a hard deadline, and packs the
# results (weights in fp16, nothing the teacher folder already holds) into $OUT in parts the tool brings
# back (<= 15 MB each).
#
#   device run (carry: [".whl"], timeout_s: 600):
#     bash scripts/gpu_session.sh                      the chain and its ControlNets / LoRA (distill_gpu.sh)
#                                                      on the shipped teacher, into runs/gpu
#     TEACHER=assets/miniature/teacher-sd4 RUNS=runs/gpu-sd4 bash scripts/gpu_session.sh
#                                                      the same on the SD1.5-layout teacher
#     MODE=teacher bash scripts/gpu_session.sh         a new sd4 teacher (runs/gpu-teacher/teacher) for most
#                                                      of the deadline, then its block-KD student and the
#                                                      evaluator's scores of both; alongside it on the same
#                                                      card, the shipped teacher's ControlNet and style-LoRA
#                                                      teachers (runs/gpu: what ControlNet-/LoRA-SSD continue)
#     MODE=onestep bash scripts/gpu_session.sh         FM warmup, then SSD, of runs/gpu-teacher's block-KD
#                                                      student, scored by the evaluator (the call after
#                                                      MODE=teacher on the still-warm machine; on a fresh one,
#                                                      carry runs/gpu-teacher/{teacher,block_kd/final})
#     MODE=lora bash scripts/gpu_session.sh            LoRA-SSD settings side by side (runs/gpu-lora/NAME) from the
#                                                      shipped sd4 student and teacher LoRA, for most of the deadline
#                                                      (session 20: launch-bound, ~6 U-Net passes of ~900 modules a
#                                                      step: 3.1 steps/s alone at batch 64, 2.2 each with six side by
#                                                      side; so batch size is nearly free there, steps are not)
#   here, afterwards:  bash scripts/gpu_session.sh --unpack /work/.device/N runs [TEACHER]
#                      (TEACHER: the teacher the chain ran on, whose parts are put back; default the shipped one)
#
# Learnt the hard way: python3 is a venv's interpreter there (a symlink named python loses the venv,
# so a wrapper script is used), a deadline that leaves no time to pack brings nothing back, and the
# tool brings back at most 64 MB (fp32 weights of the sd4 chain are more).
set -uo pipefail
if [ "${1:-}" = "--unpack" ]; then  # --unpack FILES_AT RUNS [TEACHER]: untar, put the teacher's parts back
  mkdir -p "$3" && cat "$2"/r.tgz.part-* | tar xzf - -C "$3" || exit 1
  tops=$(cat "$2"/r.tgz.part-* | tar tzf - | cut -d/ -f2 | sort -u | grep -v '^$')
  .venv/bin/python - "$3" "${4:-assets/miniature/teacher}" $tops <<'PY'
import json, shutil, sys
from pathlib import Path
runs, teacher, tops = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
for top in tops:
    for index in (runs / top).glob("**/model_index.json"):
        folder, vae = index.parent, json.loads(index.read_text())["vae"][1]
        for part in ("text_encoder", "tokenizer", "vae", "unet"):  # a decoder run's unet is the teacher's
            if not (folder / part).exists():
                if part == "vae" and vae != "AutoencoderKL":
                    raise SystemExit(f"{folder}: its {vae} did not come back")
                shutil.copytree(teacher / part, folder / part)
print(f"unpacked {' '.join(tops)} into {runs}")
PY
  exit
fi
: "${OUT:?OUT must name the folder whose files come back}"
DEADLINE=${DEADLINE:-520}  # seconds for the work: >= 60 s under the call's timeout_s, for packing
# Stage budgets sized so the run ends inside DEADLINE. Session 7 on an H200: at 0.75 the stages up to the
# ControlNet-SSD ended at 464 s and decoder_student (~70 s of fixed cost) was cut at 500 s; the fixed cost
# of all stages on the critical path is ~270 s, their budgets ~420 s x BUDGET_SCALE.
export BUDGET_SCALE=${BUDGET_SCALE:-0.6}
PY=${PYTHON3:-python3}  # there: the image's python3 (a venv holding torch)
if ! "$PY" -c "import diffusers" 2>/dev/null; then  # the image lacks diffusers: install the carried wheels
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site:$PWD
fi
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v "$PY")" >/tmp/bin/python && chmod +x /tmp/bin/python
export PATH=/tmp/bin:$PATH HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
python -c "import torch, diffusers; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU', \
'diffusers', diffusers.__version__)" || exit 4

pack() {  # pack DIR... (under runs/): the weights that matter, in fp16, split into $OUT/r.tgz.part-*
  rm -rf /tmp/pack && mkdir -p /tmp/pack && cp -r --parents "$@" /tmp/pack/
  python - /tmp/pack <<'PY'
import json, shutil, sys
from pathlib import Path
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
root = Path(sys.argv[1])
def drop(p: Path) -> bool:  # re-made here (checkpoints, pair caches, exports) or the teacher's own parts
    if p.name.startswith("checkpoint-") or p.name.startswith("pairs") or p.name in ("text_encoder", "tokenizer"):
        return True
    if p.name == "assets" or (p.name == "final" and (p.parent.name.startswith("ssd_") or "_kd_" in p.parent.name)):
        return True  # fp16 exports; SSD settings not chosen and ControlNet KD inits (their logs stay)
    index = p.parent / "model_index.json"
    if p.name in ("vae", "unet") and index.is_file():
        vae = json.loads(index.read_text())["vae"][1]
        return (p.name == "vae" and vae == "AutoencoderKL") or (p.name == "unet" and p.parent.parent.name.startswith("decoder"))
    return False
for p in sorted(root.rglob("*"), key=lambda p: len(p.parts)):
    if p.exists() and drop(p):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
for f in root.rglob("*.safetensors"):
    with safe_open(f, "pt") as h:
        meta = h.metadata()
    save_file({k: v.half() if v.dtype == torch.float32 else v for k, v in load_file(f).items()}, f, metadata=meta)
PY
  tar czf /tmp/results.tgz -C /tmp/pack/runs . && split -b 15M /tmp/results.tgz "$OUT/r.tgz.part-"
  ls -la "$OUT"
}

COMMON=(--set all.max_steps=100000 --set all.validate_every=0 --set all.checkpoint_every=2000
        --set all.lr_schedule=cosine --set all.warmup_steps=50 --set all.log_every=50)
evaluate() {  # evaluate NAME MODEL [--steps 25 --cfg 5]: the evaluator's 256 images, JSON in $RUNS/logs
  local name=$1 model=$2
  shift 2
  timeout -k 5 "${EVAL_S:-45}" python -m trainers.miniature.evaluate --model "$model" --n "${EVAL_N:-256}" "$@" \
    --json "$RUNS/logs/eval_$name.json" >"$RUNS/logs/eval_$name.log" 2>&1
}

case "${MODE:-chain}" in
teacher)
  RUNS=runs/gpu-teacher SIDE=runs/gpu
  mkdir -p "$RUNS/logs" "$SIDE/logs"
  KD_S=${KD_S:-170}  # seconds left after the teacher: block KD with its set-up, and the evaluation
  for s in controlnet_teacher_edges controlnet_teacher_depth lora_teacher; do  # session 7's budgets
    timeout -k 5 "$DEADLINE" python -m trainers.miniature.distill --stages $s --teacher assets/miniature/teacher \
      --runs $SIDE --assets $SIDE/assets "${COMMON[@]}" --set $s.max_minutes="${SIDE_MIN:-1.9}" \
      --set $s.batch_size=64 >"$SIDE/logs/$s.log" 2>&1 &
  done
  timeout -k 5 $((DEADLINE - KD_S)) python -m trainers.miniature.teacher unet --vae assets/miniature/teacher/vae \
    --text-from assets/miniature/teacher --layout sd4 --out "$RUNS/teacher" --n-data "${N_DATA:-200000}" \
    --batch "${BATCH:-512}" --steps 1000000 --lr "${LR:-1e-3}" --save-every 1 \
    --minutes "$(awk "BEGIN { print ($DEADLINE - $KD_S - 40) / 60 }")" >"$OUT/run.log" 2>&1
  echo "teacher rc=$?" >>"$OUT/run.log"
  timeout -k 5 $((KD_S - 30)) python -m trainers.miniature.distill --stages block_kd --teacher "$RUNS/teacher" \
    --runs "$RUNS" --assets "$RUNS/assets" "${COMMON[@]}" --set block_kd.batch_size=256 --set block_kd.lr=5e-4 \
    --set block_kd.num_images="${KD_IMAGES:-16384}" \
    --set block_kd.max_minutes="$(awk "BEGIN { print ($KD_S - 85) / 60 }")" >"$RUNS/logs/block_kd.log" 2>&1 &
  kd=$!
  evaluate teacher "$RUNS/teacher" --steps 25 --cfg 5
  wait $kd
  echo "block_kd rc=$?" >>"$OUT/run.log"
  [ -d "$RUNS/block_kd/final" ] && evaluate block_kd "$RUNS/block_kd/final" --steps 25 --cfg 5
  wait
  pack "$RUNS" "$SIDE"
  ;;
onestep)
  RUNS=runs/gpu-teacher
  mkdir -p "$RUNS/logs"
  for part in text_encoder tokenizer vae; do  # a carried teacher comes without the parts the shipped one has
    [ -d "$RUNS/teacher/$part" ] || cp -r "assets/miniature/teacher/$part" "$RUNS/teacher/"
  done
  ONE=(--teacher "$RUNS/teacher" --runs "$RUNS" --assets "$RUNS/assets" "${COMMON[@]}" --set all.num_pairs="${PAIRS:-16384}")
  timeout -k 5 150 python -m trainers.miniature.distill --stages fm_warmup "${ONE[@]}" --set fm_warmup.batch_size=256 \
    --set fm_warmup.lr=2e-4 --set fm_warmup.max_minutes="${FM_MIN:-0.9}" >"$RUNS/logs/fm_warmup.log" 2>&1
  echo "fm_warmup rc=$?" >>"$OUT/run.log"
  evaluate fm_warmup "$RUNS/fm_warmup/final" &
  timeout -k 5 130 python -m trainers.miniature.distill --stages ssd "${ONE[@]}" --set ssd.batch_size=64 \
    --set ssd.lr_schedule=constant --set ssd.vae=assets/miniature/sdxs --set ssd.max_minutes="${SSD_MIN:-1.3}" \
    >"$RUNS/logs/ssd.log" 2>&1
  echo "ssd rc=$?" >>"$OUT/run.log"
  evaluate ssd "$RUNS/ssd/final"
  wait
  pack "$RUNS/fm_warmup" "$RUNS/ssd" "$RUNS/logs"
  ;;
lora)
  RUNS=runs/gpu-lora
  mkdir -p "$RUNS/logs"
  export OMP_NUM_THREADS=2
  MIN=${LORA_MIN:-$(awk "BEGIN { print ($DEADLINE - 90) / 60 }")}
  variant() {  # variant NAME [--set lora_ssd.K=V ...]: one LoRA-SSD run, the miniature recipe with these changes
    local name=$1
    shift
    mkdir -p "$RUNS/$name/ssd" "$RUNS/$name/lora_teacher"
    ln -sfn "$PWD/assets/miniature/sdxs-sd4" "$RUNS/$name/ssd/final"
    ln -sfn "$PWD/assets/miniature/lora-pastel-teacher-sd4" "$RUNS/$name/lora_teacher/final"
    timeout -k 5 $((DEADLINE - 20)) python -m trainers.miniature.distill --stages lora_ssd --runs "$RUNS/$name" \
      --teacher assets/miniature/teacher-sd4 --set lora_ssd.max_minutes="$MIN" --set lora_ssd.validate_every=0 \
      --set lora_ssd.checkpoint_every=2000 "$@" >"$RUNS/logs/$name.log" 2>&1
    echo "$name rc=$?" >>"$OUT/run.log"
  }
  variant ship16 &
  variant ship64 --set lora_ssd.batch_size=64 &
  variant up2_16 --set "lora_ssd.lora_blocks=[up_blocks.2, conv_out]" &
  variant up2_r32 --set "lora_ssd.lora_blocks=[up_blocks.2, conv_out]" --set lora_ssd.lora_rank=32 \
    --set lora_ssd.lora_alpha=32 --set lora_ssd.lr=3e-4 --set lora_ssd.batch_size=64 &
  variant ship_fm --set lora_ssd.fresh_ratio=0.5 --set lora_ssd.num_pairs="${PAIRS:-4096}" --set lora_ssd.batch_size=64 \
    --set lora_ssd.max_minutes="$(awk "BEGIN { print $MIN - 0.5 }")" &
  variant whole16 --set "lora_ssd.lora_blocks=[]" &
  wait
  pack "$RUNS"/*/lora_ssd "$RUNS/logs"
  ;;
chain)
  RUNS=${RUNS:-runs/gpu}
  timeout -k 5 "$DEADLINE" bash scripts/distill_gpu.sh "$RUNS" "${TEACHER:-assets/miniature/teacher}" >"$OUT/run.log" 2>&1
  echo "distill_gpu.sh rc=$?" >>"$OUT/run.log"  # at the deadline, timeout ends the stages too (its process group)
  pack "$RUNS"
  ;;
*)
  echo "MODE=$MODE: expected chain, teacher, onestep or lora" >&2
  exit 2
  ;;
esac
tail -n 3 "$OUT/run.log" "$RUNS"/logs/*.log
grep -h -E '"model"|"prompt_accuracy"|"mfid"' "$RUNS"/logs/eval_*.json
