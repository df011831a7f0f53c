#!/usr/bin/env bash
# Set up and start SDXS Studio (python app.py) on the bundled default model, offline.
# Extra arguments go to app.py, e.g. --port 7861 or --model PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/python app.py "$@"
