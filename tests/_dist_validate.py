"""Runs cutie.inference.validate on the tiny val split in this process: alone, or as one rank under torchrun
(gloo on the CPU), for tests/test_validate_distributed.py. The network is the small model filled by the shared
weights rule (seed 7, as tests/test_eval.py). Per job, <out>/<job>/rank<r>.json holds the metrics or the error,
and <out>/<job>/masks-rank<r>/ the masks this rank wrote (so the test sees which videos each rank segmented).

    python tests/_dist_validate.py --data ROOT --reference DIR --out DIR --job NAME[:MAX_VIDEOS] ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cutie.inference import validate
from cutie.model import build_network, load_model_config
from cutie.testing.weights_rule import load_weights_rule
from cutie.utils import dist


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True, help="a DAVIS-layout trainval folder")
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--job", action="append", required=True, help="NAME or NAME:MAX_VIDEOS")
    args = parser.parse_args()
    # A short group timeout: a rank left waiting in a collective fails within the test's own timeout.
    state, device = dist.init("cpu", timeout_s=120)
    net = build_network(load_model_config("small"))
    net.load_state_dict(load_weights_rule(args.reference).fill_state_dict(net.state_dict(), seed=7))
    failed = False
    for job in args.job:
        name, _, max_videos = job.partition(":")
        out = args.out / name
        try:
            metrics = validate(
                net,
                image_dir=str(args.data / "JPEGImages/480p"),
                mask_dir=str(args.data / "Annotations/480p"),
                subset=str(args.data / "ImageSets/2017/val.txt"),
                device=device,
                out_dir=str(out / f"masks-rank{state.rank}"),
                max_videos=int(max_videos) if max_videos else None,
                dist_state=state,
            )
            result: dict = {"metrics": metrics}
        except Exception as e:
            failed = True
            result = {"error": str(e), "type": type(e).__name__}
        result["world_size"] = state.world_size
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{state.rank}.json").write_text(json.dumps(result))
    dist.shutdown()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
