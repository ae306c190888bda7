"""SA-V val/test scoring: per-object J&F over per-object PNG folders, by hand, and the CLI on SA-V folders."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cutie.metrics import evaluate_sav_folders, is_sav_layout
from cutie.metrics.measures import boundary_f_measure
from cutie.metrics.sav import score_object

REPO = Path(__file__).resolve().parents[1]


def _save(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(mask.astype(np.uint8), mode="L")
    img.putpalette([0, 0, 0, 128, 0, 0] + [0] * (256 * 3 - 6))
    img.save(path)


def _square(y: int, x: int, side: int = 8, size: int = 32) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[y : y + side, x : x + side] = True
    return m


def _write_object(root: Path, video: str, obj: str, masks: dict[int, np.ndarray]) -> None:
    for t, m in masks.items():
        _save(root / video / obj / f"{t:05d}.png", m)


def test_score_object_counts_frames_from_first_sight() -> None:
    empty = np.zeros((32, 32), bool)
    gt = np.stack([empty, _square(4, 4), _square(4, 6)])
    pred = np.stack([empty, _square(4, 4), _square(4, 4)])
    j, f = score_object(gt, pred)
    # frame 0: empty in both and the object not seen yet -> not counted (SA-V's evaluator); then 2 frames
    assert j.shape == (2,) and j[0] == 1.0 and j[1] == pytest.approx(48 / 80)
    assert f[1] == pytest.approx(boundary_f_measure(gt[2], pred[2]))
    # once seen, an empty-vs-empty frame counts (J = 1)
    j2, _ = score_object(np.stack([_square(4, 4), empty]), np.stack([_square(4, 4), empty]))
    assert j2.tolist() == [1.0, 1.0]


def test_sav_folders_per_object_means_and_overlaps(tmp_path: Path) -> None:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    whole = {t: _square(4, 4 + t, side=12) for t in range(5)}
    part = {t: _square(4, 4 + t, side=6) for t in range(5)}  # inside the whole: objects overlap
    late = {t: (_square(20, 20) if t >= 2 else np.zeros((32, 32), bool)) for t in range(5)}
    for name, masks in (("000", whole), ("001", part), ("002", late)):
        _write_object(gt, "vid", name, masks)
    _write_object(pred, "vid", "000", whole)
    _write_object(pred, "vid", "001", {t: np.zeros((32, 32), bool) for t in range(5)})  # part lost
    shifted = {t: np.roll(m, 2, axis=1) for t, m in late.items()}
    _write_object(pred, "vid", "002", shifted)
    assert is_sav_layout(gt, ["vid"])
    report = evaluate_sav_folders(gt, pred)
    rows = {o.object_name: o for o in report.objects}
    assert rows["000"].j.tolist() == [1.0, 1.0, 1.0]
    assert rows["001"].j.tolist() == [0.0, 0.0, 0.0] and rows["001"].f_mean == 0.0
    # object 002 shows from frame 2: scored frames 1..3, counted from frame 2
    expected_j = 48 / 80  # an 8x8 square shifted by 2 pixels
    assert rows["002"].j.tolist() == pytest.approx([expected_j, expected_j])
    summary = report.summary()
    assert summary["J-Mean"] == pytest.approx(np.mean([1.0, 0.0, expected_j]))
    assert summary["J&F-Mean"] == pytest.approx((summary["J-Mean"] + summary["F-Mean"]) / 2)
    text = report.format_tables("sav-val")
    assert "Per object results for sav-val" in text and "vid" in text
    paths = report.write_csv(tmp_path / "out", "sav-val")
    assert paths[1].read_text().splitlines()[0] == "Sequence,Object,J&F,J,F"


def test_sav_unscored_objects_and_errors_name_files(tmp_path: Path) -> None:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    ok = {t: _square(4, 4 + t) for t in range(4)}
    for root in (gt, pred):
        _write_object(root, "v", "000", ok)
        _write_object(root, "v", "001", {0: ok[0], 1: ok[1]})  # 2 annotated frames: nothing to score
        _write_object(root, "v", "002", {t: (ok[0] if t == 0 else np.zeros((32, 32), bool)) for t in range(4)})
    report = evaluate_sav_folders(gt, pred)
    assert [o.object_name for o in report.objects] == ["000"]
    reasons = {u.name: u.reason for u in report.unscored}
    assert "2 annotated frame(s)" in reasons["v_001"] and "empty on every scored frame" in reasons["v_002"]
    assert "not scored: v_002" in report.format_tables()
    # a missing prediction of a scored frame is named
    (pred / "v" / "000" / "00002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing prediction: .*000/00002\.png"):
        evaluate_sav_folders(gt, pred)
    _write_object(pred, "v", "000", {2: ok[2]})
    # a ground-truth mask of another size, and a PNG with two objects, are named
    bad = gt / "v" / "000" / "00001.png"
    _save(bad, ok[1][:30])
    with pytest.raises(ValueError, match=r"00001\.png: ground-truth mask is 32x30"):
        evaluate_sav_folders(gt, pred)
    two = ok[1].astype(np.uint8)
    two[0, 0] = 2
    _save(bad, two)
    with pytest.raises(ValueError, match=r"00001\.png: holds 3 distinct values"):
        evaluate_sav_folders(gt, pred)


def test_cli_detects_the_sav_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = tmp_path / "gt"
    _write_object(gt, "v", "000", {t: _square(4, 4 + t) for t in range(4)})
    (tmp_path / "list.txt").write_text("v\n")
    spec = importlib.util.spec_from_file_location("evaluate_masks", REPO / "scripts" / "evaluate_masks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = ["--gt_path", str(gt), "--pred_path", str(gt), "--subset", str(tmp_path / "list.txt")]
    assert module.main([*args, "--csv_dir", str(tmp_path / "csv")]) == 0
    out = capsys.readouterr().out
    assert "Per object results" in out and json.loads(out.strip().splitlines()[-1])["J&F-Mean"] == 1.0
    assert (tmp_path / "csv" / "per-object_results-val.csv").is_file()
    # a subset naming a folder outside the ground truth is refused
    (tmp_path / "list.txt").write_text("../gt\n")
    assert module.main(args) == 2
    assert "'../gt' contains '..'" in capsys.readouterr().err
