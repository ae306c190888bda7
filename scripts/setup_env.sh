#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment from requirements/lock.txt and installs the package.
# Location: $CUTIE_VENV, default ./.venv. A stamp of the lock file's hash makes a second run a no-op.
# Prints the environment's python path as its last line.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CUTIE_VENV:-$repo/.venv}"
python="${PYTHON:-python3}"
lock="$repo/requirements/lock.txt"
want="$(sha256sum "$lock" | cut -c1-16)"
stamp="$venv/.cutie-lock-$want"

if [ ! -f "$stamp" ]; then
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "error: $python is $("$python" --version 2>&1); Cutie needs Python >= 3.11 (set PYTHON=...)." >&2
        exit 1
    fi
    echo "[setup] creating environment in $venv (first run: a few minutes, ~6 GB for torch+CUDA wheels)" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >&2 || true
    "$venv/bin/python" -m pip install -q -r "$lock" >&2
    touch "$stamp"
fi
# The package itself is installed editable and without dependencies, so source edits apply at once.
# (Checked from / so that a `cutie/` folder in the current directory cannot pass for an installed package.)
if ! (cd / && "$venv/bin/python" -c 'import cutie, pathlib, sys; sys.exit(pathlib.Path(cutie.__file__).resolve().parent != pathlib.Path(sys.argv[1]).resolve())' "$repo/cutie") 2>/dev/null; then
    "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$repo" >&2
fi
echo "$venv/bin/python"
