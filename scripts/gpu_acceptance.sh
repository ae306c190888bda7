#!/usr/bin/env bash
# GPU acceptance run (docs/benchmarks.md): scripts/gpu_acceptance.sh OUT_DIR [--cpu-dry-run]
# Uses $PYTHON (default: python3), which must already have torch (CUDA) and, for the DALI part, nvidia-dali:
# nothing is installed. Ends within 8 minutes (a 420 s budget plus start-up); exit 1 if any part failed.
set -euo pipefail
if [[ $# -lt 1 ]]; then
    echo "usage: $0 OUT_DIR [--cpu-dry-run]" >&2
    exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec timeout --signal=TERM --kill-after=20 470 "${PYTHON:-python3}" "$here/scripts/gpu_acceptance.py" "$@"
