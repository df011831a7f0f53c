#!/usr/bin/env bash
# Every GPU check of the speed work in one call on a lent GPU machine (the workplace's `device` tool):
#   1. compiled (torch.compile + CUDA graphs, channels-last, sdxs_core.gpu) against eager, fp16, SDXS-512
#      architecture (random weights), batch 1 and 8: images equal within 0.02;
#   2. the app's path with --compile: a ModelHub compiling at load, then two threads generating at once
#      (the app serves sessions from a thread pool; CUDA graphs must survive that);
#   3. latency, eager vs compiled, batch 1 / 8 / 32 -> benchmarks/results/latency_cuda.json;
#   4. the live loop's server stages (SDXS-512 + its sketch ControlNet, 512x512), eager and compiled
#      -> benchmarks/results/live_loop_direct_cuda{,_compiled}.json.
# Logs and results files land in $OUT (the files the tool brings back). Compiling SDXS-512 takes about a
# minute a shape, so the four do not fit one 10-minute call: STEPS picks, two calls on the warm machine.
#
#   here, once:  bash scripts/gpu_check.sh --wheels      (diffusers, which the machine's image lacks, into .whl/)
#   device run (carry: [".whl"], timeout_s: 600):  STEPS="equality hub_threads live" bash scripts/gpu_check.sh
#   device run (carry: [".whl"], timeout_s: 600):  STEPS=latency bash scripts/gpu_check.sh
#   here, afterwards:  cp /work/.device/N/*.json benchmarks/results/
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--wheels" ]; then
  grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >>.git/info/exclude
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
    "diffusers==$(python3 -c 'import diffusers; print(diffusers.__version__)')" importlib_metadata
  ls -la .whl
  exit
fi
OUT=${OUT:-/tmp/sdxs-gpu-check}
mkdir -p "$OUT"
PY=${PYTHON3:-python3}  # there: the image's python3 (a venv holding torch); `python` may not be it
if ! "$PY" -c "import diffusers" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site:$PWD
fi
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v "$PY")" >/tmp/bin/python && chmod +x /tmp/bin/python
export PATH=/tmp/bin:$PATH HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
STEPS=${STEPS:-equality hub_threads live latency}
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor  # one compile cache for every step of the call
step() {  # step NAME SECONDS CMD...: one check under its own deadline, logged to $OUT/NAME.txt; only if in STEPS
  local name=$1 seconds=$2
  shift 2
  [[ " $STEPS " == *" ${name%%_*} "* || " $STEPS " == *" $name "* ]] || { cat >/dev/null; return; }
  echo "== $name"
  timeout -k 5 "$seconds" "$@" >"$OUT/$name.txt" 2>&1
  echo "$name rc=$?" | tee -a "$OUT/summary.txt"
  tail -n 12 "$OUT/$name.txt"
}

step equality 150 python - <<'PY'
import copy, sys, torch
from benchmarks.latency import random_sdxs512_components, to_dtype
from sdxs_core.engine import OneStepEngine
from sdxs_core.gpu import accelerate

dev = torch.device("cuda")
parts = to_dtype(random_sdxs512_components(), dev, torch.float16)
eager = OneStepEngine(**parts, name="eager")
compiled = OneStepEngine(**{k: copy.deepcopy(v) if k in ("unet", "vae") else v for k, v in parts.items()}, name="c")
worst = 0.0
for batch in (1, 8):
    print(accelerate(compiled, batch=batch), flush=True)
    a = eager.generate("a photo of an astronaut", seed=3, num_images=batch, output_type="pt").images
    b = compiled.generate("a photo of an astronaut", seed=3, num_images=batch, output_type="pt").images
    err = (a.float() - b.float()).abs().max().item()
    worst = max(worst, err)
    print(f"batch {batch}: max |compiled - eager| = {err:.4f} (images in [0, 1])", flush=True)
sys.exit(0 if worst < 0.02 else 1)
PY

[[ "$STEPS" == *hub* || "$STEPS" == *live* ]] && [ ! -d /tmp/sdxs512 ] && python -m benchmarks.sdxs512 /tmp/sdxs512 >"$OUT/sdxs512.txt" 2>&1
step hub_threads 150 python - <<'PY'
import sys, threading
from sdxs_core.hub import ModelHub

hub = ModelHub(search_dirs=[], device="cuda", compile="reduce-overhead")
print(hub.start("/tmp/sdxs512/sdxs-512-random", controlnet="/tmp/sdxs512/controlnet-sketch-512-random"), flush=True)
errors = []
def user(k):
    try:
        for i in range(5):
            with hub.using() as engine:
                engine.generate(f"user {k}", seed=i, output_type="np")
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
threads = [threading.Thread(target=user, args=(k,)) for k in range(2)]
[t.start() for t in threads]
[t.join() for t in threads]
print("two threads:", errors or "ok")
sys.exit(1 if errors else 0)
PY

step latency 420 python -m benchmarks.latency --device cuda --dtype fp16 --batch 1 8 32 --runs 21 </dev/null
cp benchmarks/results/latency_cuda.json "$OUT/" 2>/dev/null
LIVE=(python -m benchmarks.live_loop --client direct --device cuda --model /tmp/sdxs512/sdxs-512-random
      --controlnet /tmp/sdxs512/controlnet-sketch-512-random --control-type sketch --frames 300 --warmup 20 --repeats 1)
step live_eager 60 "${LIVE[@]}" --out "$OUT/live_loop_direct_cuda.json" </dev/null
step live_compiled 150 "${LIVE[@]}" --compile reduce-overhead --out "$OUT/live_loop_direct_cuda_compiled.json" </dev/null
cat "$OUT/summary.txt"
