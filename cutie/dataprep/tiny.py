"""The generated tiny dataset: every source format Cutie trains on, in the real on-disk layouts, in a few MB.

Layout under the output folder (the same relative paths cutie/config/data/datasets.yaml uses, so
`data_root=<out>` works directly; BURST, OVIS and SA-V are raw and must be converted first):

    static/fss/<class>/<n>.jpg + <n>.png                 FSS-1000 style, masks 0/255 grayscale
    static/{DUTS-TR,DUTS-TE,ecssd,BIG_small,HRSOD_small}/NAME.jpg + NAME.png
    DAVIS/2017/trainval/JPEGImages/480p/<video>/00000.jpg ...   Annotations/480p/<video>/00000.png (palette, id)
    DAVIS/2017/trainval/ImageSets/2017/{train,val}.txt
    YouTube/train/{JPEGImages,Annotations}/<video>/00000, 00005, ...  (every 5th frame number, as YouTube-VOS)
    MOSE/train/{JPEGImages,Annotations}/<video>/00000 ...
    BURST/frames/train/<dataset>/<seq>/<frame>.jpg  +  BURST/train/train.json   (BURST schema, RLE strings)
    OVIS/train/<video>/img_0000001.jpg ...          +  OVIS/annotations_train.json (YouTube-VIS schema)
    SA-V/sav_train/sav_000/<video>.mp4 + <video>_manual.json [+ _auto.json]  (SA-V schema, 24 fps, every 4th
                                                       frame annotated; convert to SA-V/train-vos)
    SA-1B/sa_00000{0,1}/sa_<n>.jpg + sa_<n>.json        SA-1B schema (one JSON per image, compressed RLE masks)
    SA-V/sav_val/{sav_val.txt, JPEGImages_24fps/<video>/00000.jpg ..., Annotations_6fps/<video>/<obj>/00000.png ...}
                                                       SA-V val layout: every frame, a 0/1 PNG per object every 4th
    custom-sparse/{JPEGImages,Annotations}/<video>/    a sparsely annotated custom folder (data=custom
                                                       data.custom_root=<out>/custom-sparse): a JPEG on every
                                                       frame, a PNG on some
    TINY_DATASET.json                                  what was generated (seed, counts); no timestamps

Deterministic: each video draws from its own generator seeded by (seed, crc32 of its path), images are written
with a fixed JPEG quality, PNGs carry no metadata, JSON keeps a fixed key order. Same seed -> same bytes with the
same numpy/Pillow/libjpeg on the same kind of CPU (numpy's vectorised sin/cos may differ in the last bit between
CPU families, which can move a boundary pixel; the layout and statistics do not change).

Edge cases on purpose: 1-5 objects that occlude each other and leave the frame, objects entering late (videos
whose first frames have empty masks), trailing empty frames, videos shorter than 8 frames, several frame sizes;
BURST: a track id > 255, overlapping tracks, an annotated frame with no tracks, sparse annotation over all frames;
OVIS: compressed RLE, uncompressed RLE, null (absent) and polygon segmentations; SA-V: overlapping masklets (a
part inside a whole), a masklet appearing late, a video with manual and auto masklets and one with manual only;
custom-sparse: masks on every 3rd / every 2nd frame, an object entering late, one mask 1 px narrower than its
frame, and a video like the Cutie judo example (masks on frames 0, 5, 8, 13, each labelling only the object it
introduces: partial labels).
"""

from __future__ import annotations

import json
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from cutie.dataprep.imageio import encode_gray_png, encode_jpeg, encode_palette_png
from cutie.dataprep.scenes import Blob, blob_pixels, random_blob, render_salient_image, render_video
from cutie.utils.atomic import atomic_write_json

MANIFEST = "TINY_DATASET.json"
GENERATOR_VERSION = 2  # 2: SA-1B, SA-V val and a sparse custom folder added


@dataclass(frozen=True)
class VideoSpec:
    name: str
    width: int
    height: int
    length: int
    objects: int
    enter_at: int = 0  # frames before any object exists (empty masks at the start)
    leaving: int = 0  # how many objects leave the frame by the end
    late: int = 0  # how many objects enter half-way


DAVIS_TRAIN = [
    VideoSpec("blob-dance", 160, 120, 12, 2),
    VideoSpec("crowd", 200, 150, 14, 5, leaving=1),
    VideoSpec("drifter", 128, 96, 10, 1, leaving=1),
    VideoSpec("short-hop", 176, 144, 6, 3, late=1),
]
DAVIS_VAL = [
    VideoSpec("crossing", 160, 120, 10, 2),
    VideoSpec("juggle", 144, 112, 8, 3, leaving=1),
]
YOUTUBE = [
    VideoSpec("003234408d", 160, 96, 10, 2, enter_at=2),
    VideoSpec("0065b171f9", 200, 150, 12, 4, late=2),
    VideoSpec("00f88c4f0a", 128, 96, 7, 1),
    VideoSpec("01baa5a4e1", 176, 144, 11, 1, leaving=1),
]
MOSE = [
    VideoSpec("3a1b2c4d", 200, 150, 12, 5, leaving=2),
    VideoSpec("5e6f7a8b", 160, 120, 9, 3, enter_at=1),
    VideoSpec("9c0d1e2f", 144, 112, 15, 2, late=1),
]
OVIS = [
    VideoSpec("2fb5a55b", 160, 120, 12, 4),
    VideoSpec("7c3d9e10", 128, 96, 6, 2, enter_at=1),
    VideoSpec("b5e1f0a2", 176, 132, 10, 3, leaving=1),
]
# Images per flat static set (sizes drawn per image, 100-240 px) and per FSS class (224x224, as FSS-1000).
STATIC_FLAT = {"DUTS-TR": 6, "DUTS-TE": 4, "ecssd": 3, "BIG_small": 2, "HRSOD_small": 2}
FSS_CLASSES = {"abacus": 3, "bee": 3, "cactus_ball": 2}


def _rng(seed: int, key: str) -> np.random.Generator:
    # crc32 rather than hash(): stable across processes and Python versions.
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _blobs(rng: np.random.Generator, spec: VideoSpec) -> list[Blob]:
    blobs = []
    for i in range(spec.objects):
        first = spec.enter_at
        if i >= spec.objects - spec.late:
            first = max(spec.enter_at, spec.length // 2)
        blobs.append(random_blob(rng, spec.height, spec.width, spec.length, first=first, leaves=i < spec.leaving))
    return blobs


def _render(seed: int, key: str, spec: VideoSpec) -> tuple[np.ndarray, np.ndarray, list[Blob]]:
    rng = _rng(seed, key)
    blobs = _blobs(rng, spec)
    frames, ids = render_video(rng, spec.height, spec.width, spec.length, blobs)
    return frames, ids, blobs


def _write_vos_video(
    seed: int, key: str, spec: VideoSpec, img_dir: Path, mask_dir: Path, step: int = 1
) -> dict[str, int]:
    frames, ids, _ = _render(seed, key, spec)
    for t in range(spec.length):
        stem = f"{t * step:05d}"
        _write(img_dir / spec.name / f"{stem}.jpg", encode_jpeg(frames[t]))
        _write(mask_dir / spec.name / f"{stem}.png", encode_palette_png(ids[t]))
    return {"frames": spec.length, "empty_frames": int(sum(1 for t in range(spec.length) if ids[t].max() == 0))}


def write_static(out: Path, seed: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for cls, n in FSS_CLASSES.items():
        class_rng = _rng(seed, f"static/fss/{cls}")
        colours = class_rng.uniform(0, 255, size=(2, 3))  # one look per class, as a few-shot class would have
        for k in range(1, n + 1):
            rng = _rng(seed, f"static/fss/{cls}/{k}")
            img, mask = render_salient_image(rng, 224, 224, colours + rng.normal(0, 10, size=(2, 3)))
            _write(out / "static" / "fss" / cls / f"{k}.jpg", encode_jpeg(img))
            _write(out / "static" / "fss" / cls / f"{k}.png", encode_gray_png(mask))
        counts["fss"] = counts.get("fss", 0) + n
    for name, n in STATIC_FLAT.items():
        for k in range(n):
            stem = f"{name.lower().replace('-', '_')}_{k:04d}"
            rng = _rng(seed, f"static/{name}/{stem}")
            h, w = (int(v) for v in rng.integers(100, 241, size=2))
            img, mask = render_salient_image(rng, h, w)
            _write(out / "static" / name / f"{stem}.jpg", encode_jpeg(img))
            _write(out / "static" / name / f"{stem}.png", encode_gray_png(mask))
        counts[name] = n
    return counts


def write_davis(out: Path, seed: int) -> dict[str, int]:
    root = out / "DAVIS" / "2017" / "trainval"
    frames = 0
    for spec in DAVIS_TRAIN + DAVIS_VAL:
        frames += _write_vos_video(
            seed, f"DAVIS/{spec.name}", spec, root / "JPEGImages" / "480p", root / "Annotations" / "480p"
        )["frames"]
    sets = root / "ImageSets" / "2017"
    _write(sets / "train.txt", "".join(f"{s.name}\n" for s in sorted(DAVIS_TRAIN, key=lambda s: s.name)).encode())
    _write(sets / "val.txt", "".join(f"{s.name}\n" for s in sorted(DAVIS_VAL, key=lambda s: s.name)).encode())
    return {"videos": len(DAVIS_TRAIN) + len(DAVIS_VAL), "frames": frames}


def write_plain_vos(out: Path, seed: int, dataset: str, specs: list[VideoSpec], step: int) -> dict[str, int]:
    root = out / dataset / "train"
    frames = 0
    for spec in specs:
        frames += _write_vos_video(
            seed, f"{dataset}/{spec.name}", spec, root / "JPEGImages", root / "Annotations", step=step
        )["frames"]
    return {"videos": len(specs), "frames": frames}


def _rle_string(mask: np.ndarray) -> str:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return rle["counts"].decode("ascii")


@dataclass(frozen=True)
class BurstSpec:
    dataset: str
    seq_name: str
    video: VideoSpec
    track_ids: tuple[int, ...]  # one per object
    frame_name: str  # format with the frame number (1-based)
    annotate_every: int


BURST_SEQS = [
    # Overlapping tracks (masks are amodal blobs, so crossing blobs overlap), sparse annotation.
    BurstSpec("LaSOT", "airplane-3", VideoSpec("", 160, 120, 16, 2), (1, 2), "{:08d}.jpg", 2),
    # A track id > 255; objects enter late, so the first annotated frame has no tracks.
    BurstSpec(
        "YFCC100M",
        "v_25685519b728afd746dfd1b2fe77c",
        VideoSpec("", 176, 132, 18, 3, enter_at=3),
        (7, 300, 1024),
        "frame{:04d}.jpg",
        3,
    ),
    BurstSpec(
        "YFCC100M",
        "v_5c2ea3e1e2a4b3a8d2c9f1e4a7b6c5d",
        VideoSpec("", 128, 96, 6, 1, leaving=1),
        (1,),
        "frame{:04d}.jpg",
        1,
    ),
]


def _blob_masks(blobs: list[Blob], spec: VideoSpec, t: int) -> list[np.ndarray]:
    """Amodal (unoccluded) masks of every blob at frame t, by rendering each blob alone."""
    yy, xx = np.mgrid[0 : spec.height, 0 : spec.width].astype(np.float32)
    masks = []
    for b in blobs:
        if b.first <= t <= b.last:
            masks.append(blob_pixels(b, t, spec.length, xx, yy)[0])
        else:
            masks.append(np.zeros((spec.height, spec.width), dtype=bool))
    return masks


def write_burst(out: Path, seed: int) -> dict[str, int]:
    sequences = []
    frames_root = out / "BURST" / "frames" / "train"
    for seq_id, bs in enumerate(BURST_SEQS, start=1):
        spec = bs.video
        frames, _, blobs = _render(seed, f"BURST/{bs.dataset}/{bs.seq_name}", spec)
        all_paths = [bs.frame_name.format(t + 1) for t in range(spec.length)]
        for t, name in enumerate(all_paths):
            _write(frames_root / bs.dataset / bs.seq_name / name, encode_jpeg(frames[t]))
        annotated = list(range(0, spec.length, bs.annotate_every))
        segmentations = []
        for t in annotated:
            masks = _blob_masks(blobs, spec, t)
            depth = [b.depth0 + b.depth_speed * t for b in blobs]
            frame_seg = {}
            # Far to near, so "later track wins" on overlaps matches what the image shows.
            for i in sorted(range(len(blobs)), key=lambda i: -depth[i]):
                if masks[i].any():
                    frame_seg[str(bs.track_ids[i])] = {"rle": _rle_string(masks[i]), "is_gt": True, "score": 1.0}
            segmentations.append(frame_seg)
        sequences.append(
            {
                "id": seq_id,
                "width": spec.width,
                "height": spec.height,
                "dataset": bs.dataset,
                "seq_name": bs.seq_name,
                "fps": 30,
                "all_image_paths": all_paths,
                "annotated_image_paths": [all_paths[t] for t in annotated],
                "neg_category_ids": [],
                "not_exhaustive_category_ids": [],
                "track_category_ids": {str(tid): 1 + (tid % 3) for tid in bs.track_ids},
                "segmentations": segmentations,
            }
        )
    doc = {
        "split": "train",
        "categories": [
            {"id": 1, "name": "aerosol_can", "synset": "aerosol.n.02", "def": "", "synonyms": []},
            {"id": 2, "name": "air_conditioner", "synset": "air_conditioner.n.01", "def": "", "synonyms": []},
            {"id": 3, "name": "airplane", "synset": "airplane.n.01", "def": "", "synonyms": []},
        ],
        "sequences": sequences,
    }
    _write(out / "BURST" / "train" / "train.json", json.dumps(doc).encode("utf-8"))
    return {"sequences": len(sequences), "frames": sum(s.video.length for s in BURST_SEQS)}


def _polygon(mask: np.ndarray) -> list[list[float]]:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [[float(v) for v in c.reshape(-1)] for c in contours if len(c) >= 3]


def write_ovis(out: Path, seed: int) -> dict[str, int]:
    videos, annotations = [], []
    ann_id = 1
    for vid_id, spec in enumerate(OVIS, start=1):
        frames, ids, _ = _render(seed, f"OVIS/{spec.name}", spec)
        file_names = [f"{spec.name}/img_{t + 1:07d}.jpg" for t in range(spec.length)]
        for t, name in enumerate(file_names):
            _write(out / "OVIS" / "train" / name, encode_jpeg(frames[t]))
        videos.append(
            {"id": vid_id, "width": spec.width, "height": spec.height, "length": spec.length, "file_names": file_names}
        )
        for obj in range(1, spec.objects + 1):
            segs: list[object] = []
            areas: list[float | None] = []
            for t in range(spec.length):
                m = ids[t] == obj
                if not m.any():
                    segs.append(None)
                    areas.append(None)
                    continue
                rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                areas.append(float(m.sum()))
                # Cycle the encodings OVIS/YouTube-VIS files contain; one frame of the first video is a polygon.
                if vid_id == 1 and obj == 1 and t == 2:
                    segs.append(_polygon(m))
                elif (t + obj) % 2 == 0:
                    segs.append({"size": [spec.height, spec.width], "counts": rle["counts"].decode("ascii")})
                else:
                    segs.append({"size": [spec.height, spec.width], "counts": _uncompressed_counts(m)})
            annotations.append(
                {
                    "id": ann_id,
                    "video_id": vid_id,
                    "category_id": 1 + obj % 3,
                    "iscrowd": 0,
                    "width": spec.width,
                    "height": spec.height,
                    "length": 1,
                    "segmentations": segs,
                    "areas": areas,
                    "bboxes": [None] * spec.length,
                }
            )
            ann_id += 1
    doc = {
        "info": {"description": "tiny synthetic OVIS-style set"},
        "categories": [
            {"id": 1, "name": "Person", "supercategory": "Person"},
            {"id": 2, "name": "Bird", "supercategory": "Animal"},
            {"id": 3, "name": "Cat", "supercategory": "Animal"},
        ],
        "videos": videos,
        "annotations": annotations,
    }
    _write(out / "OVIS" / "annotations_train.json", json.dumps(doc).encode("utf-8"))
    return {"videos": len(videos), "frames": sum(s.length for s in OVIS), "instances": len(annotations)}


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE counts (column-major runs, starting with a run of zeros)."""
    flat = mask.astype(np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0, *runs]
    return [int(r) for r in runs]


@dataclass(frozen=True)
class SavSpec:
    folder: str  # the release's chunk folder (sav_000, ...)
    video: VideoSpec  # length = frames of the 24 fps video
    auto: bool  # also write a <video>_auto.json


SAV_VIDEOS = [
    # 14 frames -> annotated 0, 4, 8, 12; the second blob enters half-way (empty masklet in the first frames).
    SavSpec("sav_000", VideoSpec("sav_000001", 64, 48, 14, 2, late=1), auto=True),
    SavSpec("sav_001", VideoSpec("sav_001002", 80, 64, 9, 1, leaving=1), auto=False),
]
SAV_FPS = 24
SAV_STEP = 4  # annotated at 6 fps


def _sav_rle(mask: np.ndarray) -> dict[str, object]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _sav_doc(spec: VideoSpec, kind: str, masks: list[list[np.ndarray]]) -> dict[str, object]:
    """A masklet JSON as the SA-V training release has it (sizes as float64, as there)."""
    num = len(masks[0])
    return {
        "video_id": spec.name,
        "video_duration": spec.length / SAV_FPS,
        "video_frame_count": float(spec.length),
        "video_height": float(spec.height),
        "video_width": float(spec.width),
        "video_resolution": float(spec.height * spec.width),
        "video_environment": "Indoor",
        "video_split": "train",
        "masklet": [[_sav_rle(m) for m in frame] for frame in masks],
        "masklet_id": list(range(num)),
        "masklet_size_rel": [0.0] * num,
        "masklet_size_abs": [0.0] * num,
        "masklet_size_bucket": ["small"] * num,
        "masklet_visibility_changes": [0] * num,
        "masklet_first_appeared_frame": [0] * num,
        "masklet_frame_count": [len(masks)] * num,
        "masklet_edited_frame_count": [0] * num,
        "masklet_type": [kind] * num,
        "masklet_stability_score": None,
        "masklet_num": num,
    }


def write_sav(out: Path, seed: int) -> dict[str, int]:
    """SA-V training layout: <chunk>/<video>.mp4 (24 fps, mp4v) + <video>_manual.json (+ _auto.json). Masklets
    overlap on purpose: each blob is a masklet, and so is its top half (a part inside a whole)."""
    root = out / "SA-V" / "sav_train"
    annotated = 0
    for ss in SAV_VIDEOS:
        spec = ss.video
        frames, _, blobs = _render(seed, f"SA-V/{spec.name}", spec)
        path = root / ss.folder / f"{spec.name}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), SAV_FPS, (spec.width, spec.height))
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV cannot write {path} (no mp4v encoder?)")
        for frame in frames:
            writer.write(np.ascontiguousarray(frame[:, :, ::-1]))  # OpenCV takes BGR
        writer.release()
        manual, auto = [], []
        for t in range(0, spec.length, SAV_STEP):
            wholes = _blob_masks(blobs, spec, t)
            parts = []
            for m in wholes:
                part = m.copy()
                rows = np.flatnonzero(m.any(axis=1))
                if rows.size:
                    part[rows[0] + (rows[-1] - rows[0] + 1) // 2 :] = False  # keep the top half
                parts.append(part)
            manual.append(wholes + parts[:1])
            auto.append(parts)
        _write(root / ss.folder / f"{spec.name}_manual.json", json.dumps(_sav_doc(spec, "manual", manual)).encode())
        if ss.auto:
            _write(root / ss.folder / f"{spec.name}_auto.json", json.dumps(_sav_doc(spec, "auto", auto)).encode())
        annotated += len(manual)
    return {"videos": len(SAV_VIDEOS), "annotated_frames": annotated}


@dataclass(frozen=True)
class Sa1bSpec:
    folder: str  # the release's tar, extracted into its own folder
    number: int  # sa_<number>.jpg / .json
    width: int
    height: int
    objects: int  # whole-object masks (visible regions, as SA-1B's); 0: only small masks


SA1B_IMAGES = [
    Sa1bSpec("sa_000000", 1, 180, 120, 3),
    Sa1bSpec("sa_000000", 2, 120, 180, 2),  # portrait
    Sa1bSpec("sa_000001", 11, 160, 128, 2),
    Sa1bSpec("sa_000001", 12, 144, 112, 0),  # only masks below the default area threshold: no samples
]


def _sa1b_annotation(ann_id: int, mask: np.ndarray, iou: float, stability: float) -> dict[str, object]:
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
    return {
        "bbox": box,
        "area": int(mask.sum()),
        "segmentation": _sav_rle(mask),
        "predicted_iou": iou,
        "point_coords": [[float(xs.mean()), float(ys.mean())]],
        "crop_box": [0.0, 0.0, float(w), float(h)],
        "id": ann_id,
        "stability_score": stability,
    }


def write_sa1b(out: Path, seed: int) -> dict[str, int]:
    """SA-1B layout: per image sa_<n>.jpg + sa_<n>.json. Masks as the release has them: visible regions of whole
    objects, a part inside a whole (overlapping masks), small things below the default area threshold (2% of the
    image: a disc of 0.5-1%), and one whole object with a low predicted_iou (for the optional score filter)."""
    masks_total = 0
    for spec in SA1B_IMAGES:
        rng = _rng(seed, f"SA-1B/{spec.folder}/sa_{spec.number}")
        h, w = spec.height, spec.width
        blobs = [random_blob(rng, h, w, 1) for _ in range(spec.objects)]
        frames, ids = render_video(rng, h, w, 1, blobs)
        masks = [ids[0] == k + 1 for k in range(spec.objects)]
        masks = [m for m in masks if m.any()]
        if masks:
            part = masks[0].copy()
            rows = np.flatnonzero(part.any(axis=1))
            part[rows[0] + (rows[-1] - rows[0] + 1) // 2 :] = False  # the top half of the first object
            masks.append(part)
        yy, xx = np.mgrid[0:h, 0:w]
        for _ in range(2):  # small things: discs of 0.5-1% of the image
            r = np.sqrt(rng.uniform(0.005, 0.01) * h * w / np.pi)
            cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
            masks.append((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r)
        anns = []
        for k, m in enumerate(masks):
            iou = 0.5 if k == 1 and spec.objects > 1 else float(np.round(rng.uniform(0.88, 1.0), 6))
            anns.append(_sa1b_annotation(1000 * spec.number + k, m, iou, float(np.round(rng.uniform(0.95, 1), 6))))
        name = f"sa_{spec.number}"
        image = {"image_id": spec.number, "width": w, "height": h, "file_name": f"{name}.jpg"}
        _write(out / "SA-1B" / spec.folder / f"{name}.jpg", encode_jpeg(frames[0]))
        _write(out / "SA-1B" / spec.folder / f"{name}.json", json.dumps({"image": image, "annotations": anns}).encode())
        masks_total += len(anns)
    return {"images": len(SA1B_IMAGES), "masks": masks_total}


SAV_VAL_VIDEOS = [
    # 17 frames -> annotated 0, 4, 8, 12, 16; the second blob enters half-way (empty masks before it shows).
    VideoSpec("sav_val_000011", 72, 56, 17, 2, late=1),
    VideoSpec("sav_val_000042", 64, 48, 13, 1),
]


def write_sav_val(out: Path, seed: int) -> dict[str, int]:
    """SA-V val layout (as sav_val/ of the release): JPEGImages_24fps/<video>/<frame>.jpg on every frame,
    Annotations_6fps/<video>/<obj>/<frame>.png (a 0/1 palette PNG per object, every 4th frame, empty before the
    object shows) and sav_val.txt. Objects overlap on purpose: the blobs are amodal, and object 000's top half is
    an object of its own (a part inside a whole)."""
    root = out / "SA-V" / "sav_val"
    objects = 0
    for spec in SAV_VAL_VIDEOS:
        frames, _, blobs = _render(seed, f"SA-V/sav_val/{spec.name}", spec)
        for t in range(spec.length):
            _write(root / "JPEGImages_24fps" / spec.name / f"{t:05d}.jpg", encode_jpeg(frames[t]))
        for t in range(0, spec.length, SAV_STEP):
            wholes = _blob_masks(blobs, spec, t)
            part = wholes[0].copy()
            rows = np.flatnonzero(part.any(axis=1))
            if rows.size:
                part[rows[0] + (rows[-1] - rows[0] + 1) // 2 :] = False  # keep the top half
            for k, m in enumerate([*wholes, part]):
                _write(root / "Annotations_6fps" / spec.name / f"{k:03d}" / f"{t:05d}.png", encode_palette_png(m))
        objects += spec.objects + 1
    _write(root / "sav_val.txt", "".join(f"{s.name}\n" for s in SAV_VAL_VIDEOS).encode())
    return {"videos": len(SAV_VAL_VIDEOS), "objects": objects}


@dataclass(frozen=True)
class SparseSpec:
    video: VideoSpec
    annotated: tuple[int, ...]  # frames with a PNG
    one_object_each: bool = False  # the k-th annotated frame labels object k+1 only (partial labels)
    narrow_mask_at: int | None = None  # this annotated frame's mask is 1 px narrower than its frame


CUSTOM_SPARSE = [
    SparseSpec(VideoSpec("walk-sparse", 160, 120, 24, 3, late=1), tuple(range(0, 24, 3)), narrow_mask_at=9),
    SparseSpec(VideoSpec("hop-sparse", 144, 112, 14, 2, late=1), tuple(range(0, 14, 2))),
    SparseSpec(VideoSpec("judo-like", 128, 96, 16, 4), (0, 5, 8, 13), one_object_each=True),
]


def write_custom_sparse(out: Path, seed: int) -> dict[str, int]:
    """A custom folder in the DAVIS layout annotated sparsely, as users bring them (see the module docstring)."""
    root = out / "custom-sparse"
    masks = 0
    for ss in CUSTOM_SPARSE:
        spec = ss.video
        frames, ids, _ = _render(seed, f"custom-sparse/{spec.name}", spec)
        for t in range(spec.length):
            _write(root / "JPEGImages" / spec.name / f"{t:05d}.jpg", encode_jpeg(frames[t]))
        for k, t in enumerate(ss.annotated):
            mask = np.where(ids[t] == k + 1, ids[t], 0).astype(np.uint8) if ss.one_object_each else ids[t]
            if t == ss.narrow_mask_at:
                mask = mask[:, :-1]
            _write(root / "Annotations" / spec.name / f"{t:05d}.png", encode_palette_png(mask))
        masks += len(ss.annotated)
    return {"videos": len(CUSTOM_SPARSE), "frames": sum(s.video.length for s in CUSTOM_SPARSE), "masks": masks}


def generate(out: Path, seed: int = 0, force: bool = False) -> dict[str, object]:
    """Write the tiny dataset under `out` and return its summary (also written to out/TINY_DATASET.json)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; choose an empty or new folder")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} exists and is not empty; choose an empty folder or pass --force")
        if (out / MANIFEST).is_symlink() or not (out / MANIFEST).is_file():  # a linked manifest proves nothing
            raise FileExistsError(f"{out} is not empty and holds no {MANIFEST}: refusing to delete it with --force")
        # What is inside goes, never what a link inside points to; `out` itself may be a link (kept)
        for child in out.iterdir():
            child.unlink() if child.is_symlink() or not child.is_dir() else shutil.rmtree(child)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, object] = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "static": write_static(out, seed),
        "DAVIS": write_davis(out, seed),
        "YouTube": write_plain_vos(out, seed, "YouTube", YOUTUBE, step=5),
        "MOSE": write_plain_vos(out, seed, "MOSE", MOSE, step=1),
        "BURST": write_burst(out, seed),
        "OVIS": write_ovis(out, seed),
        "SA-V": write_sav(out, seed),
        "SA-1B": write_sa1b(out, seed),
        "SA-V val": write_sav_val(out, seed),
        "custom-sparse": write_custom_sparse(out, seed),
    }
    # Last and atomic: the manifest marks a finished dataset (--force deletes only a folder that has one).
    atomic_write_json(out / MANIFEST, summary, indent=2)
    return summary
