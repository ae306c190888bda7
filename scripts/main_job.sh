#!/usr/bin/env bash
# README command 1: set up the environment if missing, then run the main job on the embedded default
# (the generated tiny dataset, CPU): generate, convert, check, pre-train, main-train, evaluate.
# Arguments go to scripts/tiny_pipeline.py (e.g. --exp_id NAME, extra Hydra overrides).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$repo/scripts/setup_env.sh" | tail -n 1)"
cd "$repo"
exec "$py" scripts/tiny_pipeline.py "$@"
