#!/usr/bin/env bash
# README command 2: set up the environment if missing, then run the whole test suite (CPU only).
# Extra arguments go to pytest (e.g. -k loader, -x).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$repo/scripts/setup_env.sh" | tail -n 1)"
cd "$repo"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
set +e
"$py" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "error: pytest collected no tests" >&2
fi
exit "$rc"
