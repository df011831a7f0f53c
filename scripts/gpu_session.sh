#!/usr/bin/env bash
# One call on a lent GPU machine (the workplace's `device` tool), prepared so that a single try works:
# installs the carried wheels (.whl/, e.g. diffusers), runs scripts/distill_gpu.sh under a hard
# deadline, and packs the results into $OUT in parts the tool brings back (<= 15 MB each).
#
#   device run (carry: [".whl"], timeout_s: 600):  bash scripts/gpu_session.sh
#   here, afterwards:                               bash scripts/gpu_session.sh --unpack /work/.device/N runs/gpu
#
# MODE=teacher instead trains a new miniature teacher in SD1.5's 4-stage layout (``--layout sd4`` of
# trainers.miniature.teacher, on the shipped teacher's VAE and text encoder) for the whole deadline, into
# runs/gpu-teacher/teacher; unpack it the same way (into runs/gpu-teacher), evaluate it, and a later call
# runs the chain on it: TEACHER=runs/gpu-teacher/teacher with carry [".whl", "runs/gpu-teacher/teacher"].
#
# Learnt the hard way: python3 is a venv's interpreter there (a symlink named python loses the venv,
# so a wrapper script is used), and a deadline that leaves no time to pack brings nothing back.
set -uo pipefail
if [ "${1:-}" = "--unpack" ]; then  # --unpack FILES_AT RUNS [TEACHER]: untar, put the teacher's parts back
  mkdir -p "$3" && cat "$2"/r.tgz.part-* | tar xzf - -C "$3" || exit 1
  .venv/bin/python - "$3" "${4:-assets/miniature/teacher}" <<'PY'
import json, shutil, sys
from pathlib import Path
runs, teacher = Path(sys.argv[1]), Path(sys.argv[2])
teacher_vae = json.loads((teacher / "model_index.json").read_text())["vae"][1]
for index in runs.glob("**/model_index.json"):  # a VAE of another class than the teacher's: the tiny decoder
    folder, own_vae = index.parent, json.loads(index.read_text())["vae"][1] == teacher_vae
    for part in ("text_encoder", "tokenizer", "vae", "unet"):  # a decoder run's unet is the teacher's
        source = runs / "decoder" / "final" / "vae" if part == "vae" and not own_vae else teacher / part
        if not (folder / part).exists():
            shutil.copytree(source, folder / part)
print(f"unpacked into {runs}")
PY
  exit
fi
: "${OUT:?OUT must name the folder whose files come back}"
DEADLINE=${DEADLINE:-520}  # seconds for distill_gpu.sh: >= 60 s under the call's timeout_s, for packing
# Stage budgets sized so the run ends inside DEADLINE. Session 7 on an H200: at 0.75 the stages up to the
# ControlNet-SSD ended at 464 s and decoder_student (~70 s of fixed cost) was cut at 500 s; the fixed cost
# of all stages on the critical path is ~270 s, their budgets ~420 s x BUDGET_SCALE.
export BUDGET_SCALE=${BUDGET_SCALE:-0.6}
RUNS=runs/gpu
PY=${PYTHON3:-python3}  # there: the image's python3 (a venv holding torch)
if ! "$PY" -c "import diffusers" 2>/dev/null; then  # the image lacks diffusers: install the carried wheels
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site:$PWD
fi
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v "$PY")" >/tmp/bin/python && chmod +x /tmp/bin/python
export PATH=/tmp/bin:$PATH
python -c "import torch, diffusers; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU', \
'diffusers', diffusers.__version__)" || exit 4

if [ "${MODE:-chain}" = teacher ]; then
  RUNS=runs/gpu-teacher
  timeout -k 5 "$DEADLINE" python -m trainers.miniature.teacher unet --vae assets/miniature/teacher/vae \
    --text-from assets/miniature/teacher --layout sd4 --out "$RUNS/teacher" --n-data "${N_DATA:-60000}" --batch "${BATCH:-256}" --lr "${LR:-1e-3}" \
    --minutes "$(awk "BEGIN { print ($DEADLINE - 30) / 60 }")" --save-every 1 >"$OUT/run.log" 2>&1
  echo "teacher rc=$?" >>"$OUT/run.log"
  tar czf /tmp/results.tgz -C "$RUNS" --exclude='*/text_encoder' --exclude='*/tokenizer' --exclude='*/vae' . \
    && split -b 15M /tmp/results.tgz "$OUT/r.tgz.part-"
  ls -la "$OUT"; tail -5 "$OUT/run.log"
  exit
fi
timeout -k 5 "$DEADLINE" bash scripts/distill_gpu.sh "$RUNS" "${TEACHER:-assets/miniature/teacher}" >"$OUT/run.log" 2>&1
echo "distill_gpu.sh rc=$?" >>"$OUT/run.log"  # at the deadline, timeout ends the stages too (its process group)
# everything but checkpoints, pair caches and components identical to the teacher's (put back by --unpack's user)
tar czf /tmp/results.tgz -C "$RUNS" --exclude='checkpoint-*' --exclude='pairs*' --exclude='*/text_encoder' \
  --exclude='*/tokenizer' --exclude=decoder/final/unet --exclude=decoder_student/final/unet --exclude=block_kd/final/vae --exclude=mse_baseline/final/vae \
  --exclude=fm_warmup/final/vae --exclude='ssd_*/final/vae' . && split -b 15M /tmp/results.tgz "$OUT/r.tgz.part-"
ls -la "$OUT"
tail -40 "$OUT/run.log"
