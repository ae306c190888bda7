"""data_links/: one symbolic link per top-level dataset folder, so `data_root=data_links` finds everything.

The seed layout keeps datasets beside the repository (../DAVIS, ../YouTube, ...). `make_links` points
data_links/<NAME> at those folders (or at paths given per name); `presence` says, for a data config, which of the
datasets it needs are there, naming the path it looked at.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cutie.dataprep.config import DatasetPaths

# Top-level folders under data_root that datasets.yaml refers to.
TOP_LEVEL = ("DAVIS", "YouTube", "BURST", "MOSE", "static", "OVIS-VOS-train", "SA-V", "SA-1B")

# What to do when a needed dataset is absent, by the first component of its path.
FIXES = {
    "DAVIS": "download DAVIS 2017 trainval (https://davischallenge.org/) and link it: --DAVIS PATH",
    "YouTube": "download YouTube-VOS 2019 train (https://youtube-vos.org/) and link it: --YouTube PATH",
    "MOSE": "download MOSE train (https://henghuiding.github.io/MOSE/) and link it: --MOSE PATH "
    "(it must contain train/JPEGImages and train/Annotations)",
    "BURST": "download BURST (https://github.com/Ali2500/BURST-benchmark), link it (--BURST PATH), then run "
    "scripts/convert_burst_to_vos_train.py to create BURST/train-vos",
    "OVIS-VOS-train": "run scripts/convert_ovis_to_vos.py on OVIS train (https://songbai.site/ovis/), or "
    "download the preprocessed OVIS-VOS-train; link it: --OVIS-VOS-train PATH",
    "SA-V": "download the SA-V training release (https://ai.meta.com/datasets/segment-anything-video/) into "
    "SA-V/sav_train, link it (--SA-V PATH), then run scripts/convert_sav_to_vos.py to create SA-V/train-vos",
    "SA-1B": "download SA-1B (https://ai.meta.com/datasets/segment-anything/), extract its tars into SA-1B "
    "(flat or one folder per tar) and link it: --SA-1B PATH",
    "static": "download the static image sets (see DEVA's docs/TRAINING.md) and link the folder: --static PATH",
}


@dataclass
class LinkResult:
    name: str
    link: Path
    target: Path
    action: str  # created | updated | unchanged | skipped
    reason: str = ""


class LinkError(ValueError):
    """Something in the links folder that make_links will not touch; the message names the path and the fix."""


def _clear_stale_tmp(tmp: Path) -> None:
    """Removes what an interrupted earlier run may have left at the temporary link name: a link, or an empty
    folder. Anything else there is someone's data, never deleted: LinkError names it."""
    if tmp.is_symlink():
        tmp.unlink()
        return
    if not tmp.exists():
        return
    if tmp.is_dir():
        try:
            tmp.rmdir()  # fails unless empty, so a folder with content is never removed
            return
        except OSError:
            pass
    raise LinkError(
        f"{tmp} is in the way of the temporary link this script creates and is not an empty folder or a link; "
        "fix: move or rename it and rerun"
    )


def _atomic_symlink(target: str, link: Path) -> None:
    tmp = link.with_name(f".{link.name}.tmp-link")
    _clear_stale_tmp(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)  # replaces an old link in one step


def make_links(links_dir: Path, sources: dict[str, Path], relative: bool = True) -> list[LinkResult]:
    """Create or update links_dir/<name> -> sources[name] for every name whose source folder exists.

    Real folders or files already at a link's place are never touched. `relative`: write link targets relative to
    links_dir (the pair survives being moved or mounted together), else absolute."""
    links_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name, source in sources.items():
        link = links_dir / name
        source = Path(os.path.abspath(os.path.expanduser(str(source))))
        if not source.is_dir():
            results.append(LinkResult(name, link, source, "skipped", f"no folder at {source}"))
            continue
        target = os.path.relpath(source, links_dir.resolve()) if relative else str(source)
        if link.is_symlink():
            if os.readlink(link) == target:
                results.append(LinkResult(name, link, source, "unchanged"))
                continue
            _atomic_symlink(target, link)
            results.append(LinkResult(name, link, source, "updated"))
        elif link.exists():
            results.append(LinkResult(name, link, source, "skipped", f"{link} is a real folder/file, left alone"))
        else:
            _atomic_symlink(target, link)
            results.append(LinkResult(name, link, source, "created"))
    return results


@dataclass
class Presence:
    name: str
    stage: str
    checked: list[Path]  # every path looked at
    missing: list[Path]  # the ones that do not exist (empty: present)
    fix: str = ""

    @property
    def present(self) -> bool:
        return not self.missing


def presence(needs: list[DatasetPaths], data_root: Path) -> list[Presence]:
    """For each needed dataset, which of its paths exist under data_root."""
    out = []
    for need in needs:
        checked = [data_root / rel for rel in need.paths.values()]
        missing = [p for p in checked if not p.exists()]
        fix = ""
        if missing:
            top = Path(next(iter(need.paths.values()))).parts[0]
            fix = FIXES.get(top, f"put the dataset at {data_root / top}")
        out.append(Presence(need.name, need.stage, checked, missing, fix))
    return out
