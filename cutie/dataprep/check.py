"""Check every dataset a training config needs, with the data index's own validation (cutie/data/index/datasets.py).

The table rows and their problems (each with its fix) come from the index, i.e. exactly what training would
reject, every frame's files included (cached under cache_root); this module only picks the stages that are
enabled, lists each bad file, adds dataset-specific hints for missing folders, and notes the optional parts
(validation set, empty-mask lists).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cutie.config.train import TrainConfig
from cutie.data.index.datasets import DatasetReport, annotation_lines, format_table, summarize
from cutie.data.index.problems import render_each
from cutie.dataprep.config import resolve_path
from cutie.dataprep.links import FIXES

LISTED_PER_KIND = 20  # bad files listed per problem kind and dataset below the table (the rest are counted)


@dataclass
class CheckResult:
    reports: list[DatasetReport]
    hints: list[str] = field(default_factory=list)  # what to do about missing datasets
    notes: list[str] = field(default_factory=list)  # optional things that are absent (training still runs)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.reports)

    def render(self) -> str:
        parts = [format_table(self.reports)]
        annotation = [ln for r in self.reports for ln in annotation_lines(r, LISTED_PER_KIND)]
        if annotation:
            parts.append("\n".join(["annotation:", *("  " + ln for ln in annotation)]))
        for r in self.reports:
            if r.issues:
                parts.append("\n".join([f"{r.name}:", *("  " + ln for ln in render_each(r.issues, LISTED_PER_KIND))]))
            if r.skipped:
                head = f"{r.name}: masks left out of training (not blocking: wrong_size_masks=skip):"
                parts.append("\n".join([head, *("  " + ln for ln in render_each(r.skipped, LISTED_PER_KIND))]))
        checked = [f"{r.name} {r.checked.files} ({r.checked.read} read)" for r in self.reports if r.checked]
        if checked:
            seconds = sum(r.checked.seconds for r in self.reports if r.checked)
            parts.append(f"files checked: {', '.join(checked)}, the rest from the cache; {seconds:.1f} s")
        if self.hints:
            parts.append("\n".join(f"fix: {h}" for h in self.hints))
        if self.notes:
            parts.append("\n".join(f"note: {n}" for n in self.notes))
        bad = [r.name for r in self.reports if not r.ok]
        parts.append(f"NOT READY: {', '.join(bad)}" if bad else "OK: training can read every dataset it needs")
        return "\n\n".join(parts)


def check(cfg: TrainConfig) -> CheckResult:
    """Validate the datasets of the enabled stages of the training config."""
    data_root = resolve_path(cfg.run.data_root)
    stages = cfg.enabled_stages
    cache_root = str(resolve_path(cfg.run.cache_root))
    reports = summarize(cfg.data, str(data_root), cfg.main_training.seq_length, stages, cache_root)
    result = CheckResult(reports)
    result.notes += [f"{r.name}: {n}" for r in reports for n in r.notes]
    for r in reports:
        if not r.found:
            rel = Path(r.path).relative_to(data_root) if Path(r.path).is_relative_to(data_root) else Path(r.path)
            top = rel.parts[0] if rel.parts else ""
            result.hints.append(f"{r.name}: {FIXES.get(top, f'put the dataset at {r.path}')}")
    if "main_training" in stages:
        for r in reports:
            entry = cfg.data.vos_datasets.get(r.name) if r.kind == "video" else None
            if r.skipped and entry is not None and entry.wrong_size_masks == "skip":
                result.notes.append(
                    f"{r.name}: {len(r.skipped)} wrong-size masks are left out (their frames count as unannotated); "
                    f"data.vos_datasets.{r.name}.wrong_size_masks=error makes them fail the check"
                )
        for name in cfg.data.main_training.datasets:
            path = cfg.data.vos_datasets[name].empty_masks
            if path and not resolve_path(path).is_file():
                result.notes.append(
                    f"{name}: no empty-mask list at {resolve_path(path)} (optional; "
                    f"scripts/find_empty_masks.py writes it)"
                )
        val = cfg.data.val_dataset
        if val is not None and not (data_root / val.image_directory).is_dir():
            result.notes.append(
                f"validation set {val.name}: {data_root / val.image_directory} is absent; training skips validation"
            )
    return result
