#!/usr/bin/env bash
# Image entrypoint: report the software stack and the visible GPUs, then run the command.
# The first argument is either a named job (the compose services use these; extra arguments are appended as
# Hydra overrides or script options, and later ones win) or any command line (`bash`, `python ...`).
#   train       both stages:        torchrun cutie/train.py data_root=/data ...
#   pretrain    pre-training only:  ... main_training.enabled=False
#   main-train  main training only: ... pre_training.enabled=False weights=<pre-training output of exp_id>
#   eval        python cutie/eval.py ...
#   convert-burst   scripts/convert_burst_to_vos_train.py on /data/BURST
#   smoke       tiny-dataset end-to-end run (scripts/tiny_pipeline.py into $SMOKE_OUT, default output/smoke)
#               then the test suite (pytest arguments: $SMOKE_PYTEST_ARGS; empty: all tests)
#   versions    only the report
set -euo pipefail
cd "${CUTIE_WORKDIR:-/workspace}"

report() {
    python - <<'EOF'
import platform, sys
print(f"[cutie] python {platform.python_version()} ({sys.executable})")
try:
    import torch
    cuda = torch.cuda.is_available()
    print(f"[cutie] torch {torch.__version__}, built for CUDA {torch.version.cuda}, "
          f"cuDNN {torch.backends.cudnn.version() if cuda else 'n/a'}, CUDA available: {cuda}")
    for i in range(torch.cuda.device_count() if cuda else 0):
        p = torch.cuda.get_device_properties(i)
        print(f"[cutie]   GPU {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}")
except Exception as e:  # the report must never stop the job
    print(f"[cutie] torch not importable: {e}")
try:
    import nvidia.dali as dali
    print(f"[cutie] DALI {dali.__version__}")
except Exception as e:
    print(f"[cutie] DALI not importable: {e}")
EOF
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | sed 's/^/[cutie]   /' || true
    fi
    echo "[cutie] visible GPUs: ${NVIDIA_VISIBLE_DEVICES:-none set} (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset})," \
        "running as $(id -u):$(id -g)"
}

# Value of a `key=value` override among the arguments (last one wins, as in Hydra), else the default.
override() {
    local key="$1" value="$2"
    shift 2
    local arg
    for arg in "$@"; do
        if [[ "$arg" == "$key="* ]]; then value="${arg#"$key"=}"; fi
    done
    printf '%s' "$value"
}

torchrun_cmd() {
    # Static rendezvous: every node gets the same NNODES/MASTER_ADDR/MASTER_PORT and its own NODE_RANK.
    echo torchrun --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" --nproc_per_node="${NPROC:-1}" \
        --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-25357}" cutie/train.py
}

job="${1:-help}"
[ "$#" -gt 0 ] && shift
common=("data_root=${DATA_ROOT:-/data}" "output_root=${OUTPUT_ROOT:-/workspace/output}" "exp_id=${EXP_ID:-cutie}")
case "$job" in
    train)
        read -ra cmd <<<"$(torchrun_cmd)"
        set -- "${cmd[@]}" "${common[@]}" "$@"
        ;;
    pretrain)
        read -ra cmd <<<"$(torchrun_cmd)"
        set -- "${cmd[@]}" "${common[@]}" main_training.enabled=False "$@"
        ;;
    main-train)
        read -ra cmd <<<"$(torchrun_cmd)"
        exp="$(override exp_id "${EXP_ID:-cutie}" "$@")"
        out="$(override output_root "${OUTPUT_ROOT:-/workspace/output}" "$@")"
        set -- "${cmd[@]}" "${common[@]}" pre_training.enabled=False \
            "weights=${out}/${exp}/${exp}_pre_training_last.pth" "$@"
        ;;
    eval)
        set -- python cutie/eval.py "${common[@]}" "$@"
        ;;
    convert-burst)
        burst="${DATA_ROOT:-/data}/BURST"
        set -- python scripts/convert_burst_to_vos_train.py --json_path "$burst/train/train.json" \
            --frames_path "$burst/frames/train" --output_path "$burst/train-vos" "$@"
        ;;
    smoke)
        out="${SMOKE_OUT:-/workspace/output/smoke}"
        report
        echo "[cutie] smoke: tiny pipeline into $out"
        python scripts/tiny_pipeline.py --output_root "$out" "$@"
        # Default: the whole suite.  CI passes a fast selection, e.g. SMOKE_PYTEST_ARGS="-m 'not slow'".
        echo "[cutie] smoke: python -m pytest ${SMOKE_PYTEST_ARGS:-}"
        eval "set -- ${SMOKE_PYTEST_ARGS:-}"
        exec python -m pytest -p no:cacheprovider "$@"
        ;;
    versions)
        report
        exit 0
        ;;
    help | --help | -h)
        report
        sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        set -- "$job" "$@"
        ;;
esac

if [ "${CUTIE_QUIET:-0}" != "1" ]; then report; fi
echo "[cutie] exec: $*"
exec "$@"
