#!/usr/bin/env bash
# GPU acceptance run (docs/benchmarks.md): scripts/gpu_acceptance.sh OUT_DIR [--cpu-dry-run] [--carried]
# Uses $PYTHON (default: python3), which must have torch (CUDA) and, for the DALI part, nvidia-dali: nothing is
# installed from a network. --carried first installs what scripts/gpu_carry.py packed and the device calls carried
# (the lent machine lacks Hydra, OmegaConf, DALI and the shared fixtures). Ends within 8 minutes (a 420 s budget
# plus start-up; unpacking the carried packages adds ~30 s); exit 1 if any part failed.
set -euo pipefail
if [[ $# -lt 1 ]]; then
    echo "usage: $0 OUT_DIR [--cpu-dry-run] [--carried]" >&2
    exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
args=()
carried=0
for a in "$@"; do
    if [[ $a == --carried ]]; then carried=1; else args+=("$a"); fi
done
if ((carried)); then
    "$py" "$here/scripts/gpu_carry.py" stage
    lines="$("$py" "$here/scripts/gpu_carry.py" install)"  # export PYTHONPATH=... / CUTIE_REFERENCE=...
    eval "$lines"
fi
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec timeout --signal=TERM --kill-after=20 470 "$py" "$here/scripts/gpu_acceptance.py" "${args[@]}"
