#!/usr/bin/env bash
# One prepared run for a GPU machine (minutes of GPU time): builds the compiled / CUDA-graph paths
# (sdxs_core.gpu), checks them against eager at fp16, then benchmarks eager vs compiled on the
# SDXS-512 architecture (random weights) into benchmarks/results/latency_cuda.json.
#   bash scripts/gpu_check.sh            # PYTHON=... to pick the interpreter; OUT=... for a copy of the logs
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${OUT:-/tmp/sdxs-gpu-check}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

echo "== 1. compiled vs eager (fp16, 512x512, batch 1 and 8)"
"$PYTHON" - <<'PY' 2>&1 | tee "$OUT/equality.txt"
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

echo "== 2. latency: eager vs compiled, batch 1 / 8 / 32"
"$PYTHON" -m benchmarks.latency --device cuda --dtype fp16 --batch 1 8 32 --runs 21 2>&1 | tee "$OUT/latency.txt"
cp benchmarks/results/latency_cuda.json "$OUT/"
echo "done: $OUT"
