#!/usr/bin/env python
"""README command 1's job on the CPU: the whole product end to end on a generated tiny dataset.

generate the tiny dataset (every source format) -> convert BURST, OVIS and SA-V -> empty-mask lists -> check the
data -> pre-training + main training (cutie/train.py, data=tiny-mega, model=small) -> evaluation on the tiny val split
(cutie/eval.py) -> print where the weights, TensorBoard logs and pictures are.

Every step is a real command-line tool run as a subprocess; a second run reuses what exists (the generator and
converters skip finished work, training resumes from its checkpoints and finds both stages complete).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def step(title: str, cmd: list[str], env: dict | None = None) -> str:
    print(f"\n=== {title}\n$ {' '.join(cmd)}", flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        print(f"error: step '{title}' failed (exit {proc.returncode}); its output is above", file=sys.stderr)
        raise SystemExit(proc.returncode)
    print(f"--- {title}: done in {time.time() - t0:.0f}s", flush=True)
    return proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp_id", default="tiny_demo")
    ap.add_argument("--output_root", default="output")
    ap.add_argument("--data", default=None, help="tiny dataset folder (default: <output_root>/tiny_data)")
    ap.add_argument("--workers", type=int, default=2, help="loader workers")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for cutie/train.py")
    args = ap.parse_args()

    py = sys.executable
    out_root = Path(args.output_root).resolve()
    data = Path(args.data).resolve() if args.data else out_root / "tiny_data"
    cache = out_root / "tiny_cache"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    t0 = time.time()

    if not (data / ".complete").is_file():
        step(
            "generate the tiny dataset",
            [py, "scripts/make_tiny_dataset.py", "--out", str(data), "--seed", "0"],
        )
        (data / ".complete").write_text("ok\n")
    else:
        print(f"=== tiny dataset: reusing {data}")
    step(
        "convert BURST",
        [
            py,
            "scripts/convert_burst_to_vos_train.py",
            "--json_path",
            str(data / "BURST/train/train.json"),
            "--frames_path",
            str(data / "BURST/frames/train"),
            "--output_path",
            str(data / "BURST/train-vos"),
            "--workers",
            "2",
        ],
    )
    step(
        "convert OVIS",
        [
            py,
            "scripts/convert_ovis_to_vos.py",
            "--json_path",
            str(data / "OVIS/annotations_train.json"),
            "--frames_path",
            str(data / "OVIS/train"),
            "--output_path",
            str(data / "OVIS-VOS-train"),
            "--workers",
            "2",
        ],
    )
    step(
        "convert SA-V",
        [
            py,
            "scripts/convert_sav_to_vos.py",
            "--sav_path",
            str(data / "SA-V/sav_train"),
            "--output_path",
            str(data / "SA-V/train-vos"),
            "--workers",
            "2",
        ],
    )
    step(
        "empty-mask lists",
        [
            py,
            "scripts/find_empty_masks.py",
            "--data",
            "tiny-mega",
            "--data_root",
            str(data),
            "--out",
            str(cache / "empty_masks"),
        ],
    )
    step(
        "check the data",
        [py, "scripts/check_data.py", "data=tiny-mega", f"data_root={data}", f"cache_root={cache}"],
    )
    common = [
        f"exp_id={args.exp_id}",
        "model=small",
        "data=tiny-mega",
        f"data_root={data}",
        f"cache_root={cache}",
        f"output_root={out_root}",
        "device=cpu",
        f"num_workers={args.workers}",
        "log_text_interval=5",
        "log_image_interval=10",
        "save_checkpoint_interval=10",
        "save_weights_interval=1000",
        "eval_interval=0",
    ]
    step("pre-training + main training", [py, "cutie/train.py", *common, *args.overrides], env=env)
    run_dir = out_root / args.exp_id
    weights = run_dir / f"{args.exp_id}_main_training_last.pth"
    eval_out = step(
        "evaluate on the tiny val split",
        [
            py,
            "cutie/eval.py",
            f"weights={weights}",
            "dataset=tiny-val",
            "model=small",
            f"data_root={data}",
            f"exp_id={args.exp_id}",
            f"output_root={out_root}",
        ],
        env=env,
    )
    metrics = {}
    for line in reversed(eval_out.strip().splitlines()):
        if line.startswith("{"):
            metrics = json.loads(line)
            break
    print(f"\n=== done in {time.time() - t0:.0f}s")
    print(f"weights:      {run_dir}/{args.exp_id}_pre_training_last.pth, {weights}")
    print(f"checkpoints:  {run_dir}/checkpoints/")
    print(f"TensorBoard:  tensorboard --logdir {run_dir}/tb")
    print(f"pictures:     {run_dir}/images/")
    print(f"evaluation:   {run_dir}/eval/tiny-val/ (masks and per-sequence CSV)")
    print(f"log, config:  {run_dir}/train.log, {run_dir}/config.yaml")
    if metrics:
        print(
            f"tiny val J&F: {metrics.get('J&F-Mean', float('nan')):.3f} "
            f"(J {metrics.get('J-Mean', float('nan')):.3f}, F {metrics.get('F-Mean', float('nan')):.3f}) "
            "after a few dozen CPU iterations: a plumbing check, not a trained model"
        )


if __name__ == "__main__":
    main()
