"""Completion records of converted datasets (BURST, OVIS): `<output>/_meta/<video>.json`, written by the
converters (cutie/dataprep/convert.py) after a video's last file, read by the data check, which reports a video
without a valid record as an unfinished conversion. The format lives here, below both."""

from __future__ import annotations

from pathlib import Path

from cutie.utils import strict_json

META_DIR = "_meta"


def marker_path(output: Path, video: str) -> Path:
    return Path(output) / META_DIR / f"{video}.json"


def read_marker(path: Path) -> dict | None:
    """The record as a dict, or None when it is missing, unreadable or not a record (a file from outside is
    untrusted: JSON only, shape checked)."""
    try:
        meta = strict_json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and isinstance(meta.get("fingerprint"), str) else None
