#!/usr/bin/env bash
# Set up and run SDXS Studio on the bundled default model, offline. Extra arguments go to the CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
model=assets/miniature/sdxs
if [ ! -f "$model/model_index.json" ]; then
  model=outputs/tiny-model
  [ -f "$model/model_index.json" ] || .venv/bin/python -m sdxs_core.testkit --out "$model"
fi
exec .venv/bin/python -m sdxs_core generate --model "$model" --prompt "${PROMPT:-a red triangle above a blue circle on a yellow background}" --out outputs/quickstart.png --seed 0 "$@"
