"""DAVIS J&F metrics: hand-computed values, protocol invariants, folder checks and the CLI."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cutie.metrics import (
    boundary_f_measure,
    boundary_map,
    evaluate_folders,
    evaluate_sequence,
    mean_recall_decay,
    region_similarity,
)
from cutie.metrics.measures import boundary_tolerance, disk

REPO = Path(__file__).resolve().parents[1]


def _save_png(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (256 * 3 - 12))
    img.save(path)


def _moving_squares(num_frames: int = 8, size: int = 48, num_objects: int = 2, seed: int = 0) -> np.ndarray:
    """T*H*W index masks: squares drifting one pixel per frame."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((num_frames, size, size), dtype=np.int64)
    starts = rng.integers(2, size // 2, size=(num_objects, 2))
    for t in range(num_frames):
        for k, (y, x) in enumerate(starts):
            masks[t, y + t // 2 : y + t // 2 + 12, x + t // 3 : x + t // 3 + 10] = k + 1
    return masks


def _write_sequence(root: Path, name: str, masks: np.ndarray) -> None:
    for t, m in enumerate(masks):
        _save_png(root / name / f"{t:05d}.png", m)


# ---- per-frame measures, by hand -------------------------------------------------------------------------


def test_region_similarity_hand_computed() -> None:
    gt = np.zeros((6, 6), bool)
    gt[1:3, 1:3] = True  # 4 pixels
    pred = np.zeros((6, 6), bool)
    pred[1:3, 2:4] = True  # 4 pixels, 2 shared
    assert region_similarity(gt, pred) == pytest.approx(2 / 6)
    assert region_similarity(gt, gt) == 1.0
    assert region_similarity(gt, np.zeros_like(gt)) == 0.0
    # an empty prediction of an empty object is perfect
    assert region_similarity(np.zeros_like(gt), np.zeros_like(gt)) == 1.0


def test_boundary_map_hand_computed() -> None:
    seg = np.zeros((4, 4), bool)
    seg[1, 1] = True
    expected = np.zeros((4, 4), bool)
    expected[0:2, 0:2] = True  # half-pixel offset towards the origin: the pixel and its up/left neighbours
    np.testing.assert_array_equal(boundary_map(seg), expected)
    # a full mask only has its last row/column rule to apply: nothing differs, no boundary
    assert not boundary_map(np.ones((4, 4), bool)).any()


def test_disk_and_tolerance() -> None:
    np.testing.assert_array_equal(disk(1), np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8))
    assert disk(2).sum() == 13
    assert boundary_tolerance(480, 854) == 8  # ceil(0.008 * 979.6)
    assert boundary_tolerance(10, 10) == 1


def test_boundary_f_hand_computed() -> None:
    # 10x10 image: tolerance 1 pixel, a cross-shaped neighbourhood
    gt = np.zeros((10, 10), bool)
    gt[5, 5] = True  # boundary {(4,4),(4,5),(5,4),(5,5)}
    pred = np.zeros((10, 10), bool)
    pred[5, 7] = True  # boundary {(4,6),(4,7),(5,6),(5,7)}: half within one pixel of the true boundary
    assert boundary_f_measure(gt, pred) == pytest.approx(0.5)  # precision 0.5, recall 0.5
    assert boundary_f_measure(gt, gt) == 1.0
    assert boundary_f_measure(gt, np.zeros_like(gt)) == 0.0
    assert boundary_f_measure(np.zeros_like(gt), np.zeros_like(gt)) == 1.0


def test_shift_changes_f_much_more_than_j() -> None:
    gt = np.zeros((100, 100), bool)
    gt[30:70, 30:70] = True
    one = np.roll(gt, 1, axis=1)
    # one pixel: J drops a little; F only sees it without tolerance (DAVIS tolerance here is 2 px)
    assert 0.9 < region_similarity(gt, one) < 1.0
    assert boundary_f_measure(gt, one) == 1.0
    assert boundary_f_measure(gt, one, bound_th=0.0) < 0.6
    # beyond the tolerance F collapses while J stays high
    four = np.roll(gt, 4, axis=1)
    assert region_similarity(gt, four) > 0.8
    assert boundary_f_measure(gt, four) < 0.6


def test_statistics_hand_computed() -> None:
    values = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    mean, recall, decay = mean_recall_decay(values)
    assert mean == pytest.approx(0.55)
    assert recall == pytest.approx(0.5)  # 0.9, 0.8, 0.7, 0.6 are above 0.5
    # bins: boundaries [0, 2, 4, 5, 7]: first [0.9, 0.8, 0.7], last [0.4, 0.3, 0.2]
    assert decay == pytest.approx(0.8 - 0.3)
    assert mean_recall_decay(np.ones(5)) == (1.0, 1.0, 0.0)


# ---- sequences and folders ------------------------------------------------------------------------------


def test_sequence_protocol_first_last_frames_and_objects() -> None:
    gt = _moving_squares(num_frames=6)
    pred = gt.copy()
    pred[0] = 0  # first and last frames are not scored
    pred[-1] = 0
    results, unscored = evaluate_sequence("seq", gt, pred)
    assert [r.object_id for r in results] == [1, 2] and unscored == []
    for r in results:
        assert r.j.shape == (4,) and np.all(r.j == 1.0) and np.all(r.f == 1.0)
    pred[2][pred[2] == 1] = 0  # object 1 lost in one scored frame
    r1 = evaluate_sequence("seq", gt, pred)[0][0]
    assert r1.j.tolist() == [1.0, 0.0, 1.0, 1.0]


def test_prediction_with_unknown_object_is_rejected() -> None:
    gt = _moving_squares(num_frames=4)
    pred = gt.copy()
    pred[1, 0, 0] = 3
    with pytest.raises(ValueError, match="object id 3"):
        evaluate_sequence("seq", gt, pred)


def test_gt_against_itself_is_perfect(tmp_path: Path) -> None:
    for i in range(2):
        _write_sequence(tmp_path / "gt", f"video{i}", _moving_squares(seed=i))
    report = evaluate_folders(tmp_path / "gt", tmp_path / "gt")
    summary = report.summary()
    for key in ("J&F-Mean", "J-Mean", "J-Recall", "F-Mean", "F-Recall"):
        assert summary[key] == 1.0, key
    assert summary["J-Decay"] == 0.0 and summary["F-Decay"] == 0.0
    assert len(report.objects) == 4
    text = report.format_tables()
    assert "Global results for val" in text and "video1_2" in text


def test_empty_prediction_scores_zero(tmp_path: Path) -> None:
    gt = _moving_squares()
    _write_sequence(tmp_path / "gt", "v", gt)
    _write_sequence(tmp_path / "pred", "v", np.zeros_like(gt))
    summary = evaluate_folders(tmp_path / "gt", tmp_path / "pred").summary()
    assert summary["J-Mean"] == 0.0 and summary["F-Mean"] == 0.0 and summary["J&F-Mean"] == 0.0


def test_void_label_is_background_and_subset(tmp_path: Path) -> None:
    gt = _moving_squares()
    _write_sequence(tmp_path / "gt", "a", gt)
    _write_sequence(tmp_path / "gt", "b", gt)
    with_void = gt.copy()
    with_void[:, 0, :] = 255
    _write_sequence(tmp_path / "gt_void", "a", with_void)
    report = evaluate_folders(tmp_path / "gt_void", tmp_path / "gt", subset=["a"])
    assert report.summary()["J-Mean"] == 1.0
    subset_file = tmp_path / "val.txt"
    subset_file.write_text("b\n")
    assert [o.sequence for o in evaluate_folders(tmp_path / "gt", tmp_path / "gt", subset_file).objects] == [
        "b",
        "b",
    ]


def test_missing_and_extra_predictions_are_named(tmp_path: Path) -> None:
    gt = _moving_squares()
    _write_sequence(tmp_path / "gt", "v", gt)
    shutil.copytree(tmp_path / "gt", tmp_path / "pred")
    (tmp_path / "pred" / "v" / "00003.png").unlink()
    _save_png(tmp_path / "pred" / "v" / "00099.png", gt[0])
    with pytest.raises(FileNotFoundError) as err:
        evaluate_folders(tmp_path / "gt", tmp_path / "pred")
    assert "missing prediction" in str(err.value) and "00003.png" in str(err.value)
    assert "extra prediction" in str(err.value) and "00099.png" in str(err.value)
    # a whole missing sequence folder, and an extra one
    shutil.rmtree(tmp_path / "pred")
    (tmp_path / "pred" / "other").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"prediction sequence folder missing.*\n.*other"):
        evaluate_folders(tmp_path / "gt", tmp_path / "pred")


def test_ground_truth_frame_of_another_size_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = _moving_squares()
    _write_sequence(tmp_path / "gt", "v", gt)
    shutil.copytree(tmp_path / "gt", tmp_path / "pred")
    bad = tmp_path / "gt" / "v" / "00004.png"
    _save_png(bad, gt[4][:40, :44])  # one annotation cropped: 44x40 instead of 48x48
    with pytest.raises(ValueError) as err:
        evaluate_folders(tmp_path / "gt", tmp_path / "pred")
    message = str(err.value)
    assert str(bad) in message and "44x40" in message and "48x48" in message and "00000.png" in message
    assert "fix:" in message and "all input arrays" not in message
    # the CLI: exit 2, the file named on stderr
    spec = importlib.util.spec_from_file_location("evaluate_masks", REPO / "scripts" / "evaluate_masks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--gt_path", str(tmp_path / "gt"), "--pred_path", str(tmp_path / "pred")]) == 2
    assert str(bad) in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["bomb", "zero_byte", "jpeg", "folder"])
def test_an_unreadable_prediction_is_named_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    """A prediction PNG that declares 100000x100000 pixels (PIL's DecompressionBombError was an uncaught traceback
    of the CLI), is empty, is a JPEG, or is a folder: a ValueError naming it, exit 2."""
    import struct
    import zlib

    gt = _moving_squares()
    _write_sequence(tmp_path / "gt", "v", gt)
    shutil.copytree(tmp_path / "gt", tmp_path / "pred")
    bad = tmp_path / "pred" / "v" / "00003.png"
    if damage == "bomb":
        header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 3, 0, 0, 0)
        chunk = struct.pack(">I", len(header)) + b"IHDR" + header + struct.pack(">I", zlib.crc32(b"IHDR" + header))
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk)
    elif damage == "zero_byte":
        bad.write_bytes(b"")
    elif damage == "jpeg":
        Image.fromarray(gt[3].astype(np.uint8)).save(bad, format="JPEG")
    else:
        bad.unlink()
        bad.mkdir()
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        evaluate_folders(tmp_path / "gt", tmp_path / "pred")
    spec = importlib.util.spec_from_file_location("evaluate_masks", REPO / "scripts" / "evaluate_masks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--gt_path", str(tmp_path / "gt"), "--pred_path", str(tmp_path / "pred")]) == 2
    assert str(bad) in capsys.readouterr().err


def test_cli_prints_tables_and_json_last(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = _moving_squares()
    _write_sequence(tmp_path / "gt", "v", gt)
    half = gt.copy()
    half[half == 2] = 0  # object 2 never predicted: J-Mean = 0.5
    _write_sequence(tmp_path / "pred", "v", half)
    spec = importlib.util.spec_from_file_location("evaluate_masks", REPO / "scripts" / "evaluate_masks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--gt_path", str(tmp_path / "gt"), "--pred_path", str(tmp_path / "pred")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert set(result) == {"J&F-Mean", "J-Mean", "F-Mean"}
    assert result["J-Mean"] == pytest.approx(0.5) and result["F-Mean"] == pytest.approx(0.5)
    assert (tmp_path / "pred" / "global_results-val.csv").read_text().startswith("J&F-Mean,J-Mean")
    per_seq = (tmp_path / "pred" / "per-sequence_results-val.csv").read_text().splitlines()
    assert per_seq[1].startswith("v_1,1.0") and per_seq[2].startswith("v_2,0.0")
    # errors go to stderr with a non-zero exit
    (tmp_path / "pred" / "v" / "00002.png").unlink()
    assert module.main(["--gt_path", str(tmp_path / "gt"), "--pred_path", str(tmp_path / "pred")]) == 2
    assert "00002.png" in capsys.readouterr().err


# ---- late objects, unscored sequences and objects, empty ground truth -----------------------------------------


def _late_object_masks() -> np.ndarray:
    """8 frames 48x48: objects 1 and 3 from frame 0, object 2 from frame 3 on."""
    gt = np.zeros((8, 48, 48), dtype=np.int64)
    for t in range(8):
        gt[t, 2 + t : 14 + t, 2:12] = 1
        gt[t, 30:40, 30 + t : 38 + t] = 3
        if t >= 3:
            gt[t, 20:28, 2 + 2 * t : 10 + 2 * t] = 2
    return gt


def test_late_objects_are_scored_after_their_first_mask() -> None:
    gt = _late_object_masks()
    pred = gt.copy()
    pred[4][pred[4] == 2] = 0  # object 2 lost on frame 4 only
    scored, unscored = evaluate_sequence("seq", gt, pred, late_objects=True)
    assert unscored == []
    by_id = {r.object_id: r for r in scored}
    assert sorted(by_id) == [1, 2, 3]
    # objects of frame 0: frames 1..6, exactly as the DAVIS protocol
    assert by_id[1].j.tolist() == [1.0] * 6 and by_id[3].j.shape == (6,)
    # object 2, given on frame 3: frames 4, 5, 6
    assert by_id[2].j.tolist() == [0.0, 1.0, 1.0]
    # the DAVIS protocol on the same data: ids 1..max(gt[0]) = 1..3 over frames 1..6 (the toolkit counts object 2,
    # absent from frame 0, on every frame: J = 1 where both are empty); objects 1 and 3 score the same
    davis, davis_unscored = evaluate_sequence("seq", gt, pred)
    assert davis_unscored == [] and [r.object_id for r in davis] == [1, 2, 3]
    assert davis[1].j.tolist() == [1.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    np.testing.assert_array_equal(davis[0].j, by_id[1].j)
    np.testing.assert_array_equal(davis[2].f, by_id[3].f)
    # an id above the first frame's objects appears later: the DAVIS protocol lists it as not scored
    gt4 = gt.copy()
    gt4[gt4 == 2] = 4
    scored4, unscored4 = evaluate_sequence("seq", gt4, np.where(gt4 == 4, 0, gt4))
    assert [r.object_id for r in scored4] == [1, 2, 3]
    assert [(u.object_id, "after the first frame" in u.reason) for u in unscored4] == [(4, True)]
    # a prediction of an id no ground-truth frame has is an error
    bad = pred.copy()
    bad[2, 0, 0] = 7
    with pytest.raises(ValueError, match="object id 7"):
        evaluate_sequence("seq", gt, bad, late_objects=True)


def test_unscored_sequences_and_objects_are_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = _late_object_masks()
    gt[-1, 44:, 44:] = 5  # object 5 first annotated on the last frame: no frame left to score it
    _write_sequence(tmp_path / "gt", "v", gt)
    _write_sequence(tmp_path / "gt", "one", gt[:1])  # 1 frame
    _write_sequence(tmp_path / "gt", "two", gt[:2])  # 2 frames: nothing between the first and the last
    _write_sequence(tmp_path / "gt", "empty", np.zeros_like(gt))  # no object at all
    report = evaluate_folders(tmp_path / "gt", tmp_path / "gt", late_objects=True)
    assert sorted(u.name for u in report.unscored) == ["empty", "one", "two", "v_5"]
    assert {o.sequence for o in report.objects} == {"v"}
    assert report.summary()["J&F-Mean"] == 1.0  # the means hold the scored objects only, and no NaN
    text = report.format_tables("custom")
    assert "Not scored: 4" in text and "not scored: one: 1 annotated frame(s)" in text
    assert "not scored: v_5: first annotated on frame 00007" in text
    paths = report.write_csv(tmp_path / "out", "custom")
    notes = paths[2].read_text().splitlines()
    assert notes[0] == "Sequence,Scored,Note" and len(notes) == 5 and any(n.startswith("two,no,") for n in notes)
    # a set with nothing to score says why, naming the sequences
    only_short = evaluate_folders(tmp_path / "gt", tmp_path / "gt", ["one", "two"])
    with pytest.raises(ValueError, match="no object could be scored.*one: 1 annotated frame"):
        only_short.summary()


def test_empty_ground_truth_of_the_scored_frames_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gt = _moving_squares()
    gt[1:][gt[1:] == 2] = 0  # object 2 only on frame 0: its scored frames are all empty
    _write_sequence(tmp_path / "gt", "v", gt)
    with caplog.at_level("WARNING"):
        report = evaluate_folders(tmp_path / "gt", tmp_path / "gt")
    (empty,) = [o for o in report.objects if o.gt_empty]
    assert empty.object_id == 2 and np.all(empty.j == 1.0)  # J = 1 by convention, as the toolkit
    assert report.unscored == [] and report.summary()["J-Mean"] == 1.0
    assert "v_2" in caplog.text and "empty on every scored frame" in caplog.text
    assert "scored: v_2: warning: the ground truth is empty" in report.format_tables()
    with report.write_csv(tmp_path / "out")[2].open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Sequence", "Scored", "Note"] and rows[1][:2] == ["v_2", "yes"]
    assert rows[1][2].startswith("warning: the ground truth is empty")


def test_sparse_ground_truth_scores_its_frames_only(tmp_path: Path) -> None:
    dense = _late_object_masks()
    for t in range(0, 8, 3):  # ground truth every 3rd frame: 0, 3, 6
        _save_png(tmp_path / "gt" / "v" / f"{t:05d}.png", dense[t])
    pred = dense.copy()
    pred[1] = 0  # a frame without ground truth: never scored
    _write_sequence(tmp_path / "pred", "v", pred)
    with pytest.raises(FileNotFoundError, match="extra prediction"):  # the toolkit's strictness by default
        evaluate_folders(tmp_path / "gt", tmp_path / "pred")
    report = evaluate_folders(tmp_path / "gt", tmp_path / "pred", late_objects=True, extra_frames_ok=True)
    # frames 0, 3, 6: only frame 3 lies between the first and the last; object 2 is given on frame 3
    assert sorted((o.object_id, o.j.shape[0]) for o in report.objects) == [(1, 1), (3, 1)]
    assert [u.name for u in report.unscored] == ["v_2"]
    assert report.summary()["J&F-Mean"] == 1.0


@pytest.mark.parametrize("where", ["csv_dir_is_a_file", "csv_is_a_symlink"])
def test_cli_names_a_csv_it_cannot_write_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    """The tables are written after scoring: a --csv_dir that is a file, or a CSV name that is a planted symlink
    (the atomic writer refuses to write through it), ended as an uncaught OSError traceback; now exit 2 and one
    line naming the path, with nothing written through the link."""
    gt = _moving_squares()
    _write_sequence(tmp_path / "gt", "v", gt)
    _write_sequence(tmp_path / "pred", "v", gt)
    victim = tmp_path / "victim.csv"
    victim.write_text("keep\n")
    if where == "csv_dir_is_a_file":
        csv_dir = victim
    else:
        csv_dir = tmp_path / "tables"
        csv_dir.mkdir()
        (csv_dir / "global_results-val.csv").symlink_to(victim)
    spec = importlib.util.spec_from_file_location("evaluate_masks", REPO / "scripts" / "evaluate_masks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--gt_path", str(tmp_path / "gt"), "--pred_path", str(tmp_path / "pred"), "--csv_dir", str(csv_dir)]
    assert module.main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "J&F" not in line]  # no bar
    assert len(err) == 1 and err[0].startswith("error: ") and str(csv_dir) in err[0] and "Errno" not in err[0], err
    assert victim.read_text() == "keep\n"


def test_a_sequence_listed_twice_in_the_subset_is_scored_once(tmp_path: Path) -> None:
    """The DAVIS toolkit keys its sequences by name, so a repeated ImageSets line counts once; the list here kept
    both and weighted that sequence's objects twice in J&F-Mean (and eval ran the video twice)."""
    from cutie.inference.video_io import list_videos

    gt = _moving_squares()
    _write_sequence(tmp_path / "gt", "a", gt)
    _write_sequence(tmp_path / "gt", "b", gt)
    _write_sequence(tmp_path / "pred", "a", gt)
    _write_sequence(tmp_path / "pred", "b", np.zeros_like(gt))
    subset = tmp_path / "val.txt"
    subset.write_text("a\nb\na\n")
    report = evaluate_folders(tmp_path / "gt", tmp_path / "pred", subset)
    assert [o.name for o in report.objects] == ["a_1", "a_2", "b_1", "b_2"]
    assert report.summary()["J-Mean"] == pytest.approx(0.5)
    assert list_videos(tmp_path / "gt", subset) == ["a", "b"]
