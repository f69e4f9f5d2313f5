"""Preparation of real face photographs as in the paper: Haar-cascade detection, square crop, 240 x 240,
automatic 68-point landmarks, pruning of bad detections with a logged reason, a train/eval split.

On-disk format (a folder, written under `<folder>.partial` and renamed when complete):
  images.npy               (N, S, S, 3) uint8 RGB crops (S = image_size, 240 by default)
  landmarks.npy            (N, 68, 2) float32 crop px, detected (MediaPipe mapped to iBUG 68)
  landmark_confidence.npy  (N, 68) float32 in [0, 1]
  gt_landmarks.npy         (N, 68, 2) float32 crop px of the dataset's own annotation, NaN where none
  transforms.npy           (N, 2, 3) float64 crop <- image affine (detect.image_to_crop / crop_to_image)
  manifest.csv             one row per input image, kept or dropped (MANIFEST_COLUMNS); `index` is the
                           row in the arrays, -1 for a dropped image
  summary.json             counts by reason, split and source; options; timing; landmark NME vs GT
N counts kept images, in input order. Pixel coordinates: 0-based, pixel centres at integers.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from mofa.errors import MofaError
from mofa import io
from mofa.io import atomic_dir
from mofa.landmarks import N_LANDMARKS
from mofa.metrics import nme_aflw2000, nme_table, summarise
from mofa.realdata.adapters import ENV_VARS, Sample, adapter_for, points_box, root_from_env
from mofa.realdata.crop_policy import CropPolicy
from mofa.realdata.detect import choose_face, detect_faces, image_to_crop
from mofa.realdata.images import FrameReader, UnreadableImage
from mofa.realdata.landmarks68 import MediaPipeLandmarker

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
SPLITS = ("train", "eval")

UNREADABLE = "unreadable"
NO_FACE = "no face"
TOO_SMALL = "face too small"
LANDMARKS_FAILED = "landmark detector failed"
LANDMARKS_OUTSIDE = "landmarks outside the box"
REASONS = (UNREADABLE, NO_FACE, TOO_SMALL, LANDMARKS_FAILED, LANDMARKS_OUTSIDE)
"""Why an image is dropped (the manifest's `reason`; `detail` says more)."""

MANIFEST_COLUMNS = (
    "index", "id", "source", "image_path", "frame_index", "kept", "reason", "detail", "split", "dataset_split",
    "image_width", "image_height", "box_x", "box_y", "box_w", "box_h", "box_source", "box_iou",
    "yaw_deg", "detection_score", "nme_vs_gt",
)

GT_BOX_SCALE = 1.2
"""Haar box side / sqrt(w h) of the 68-landmark box, median over AFLW2000-3D (1.21) and ibug68 (1.18):
the size of the box made from ground truth when `gt_box_fallback` is on (and by the benchmark's crops)."""


def gt_box(points: np.ndarray) -> np.ndarray:
    """(68, 2) image px -> (4,) square (x, y, side, side) centred on the points' box, side
    GT_BOX_SCALE sqrt(w h)."""
    x, y, w, h = points_box(points)
    side = GT_BOX_SCALE * np.sqrt(max(w, 0.0) * max(h, 0.0))
    return np.array([x + (w - side) / 2, y + (h - side) / 2, side, side])


def split_of(key: str, seed: int, eval_fraction: float) -> str:
    """'eval' or 'train', from a hash of (seed, key): stable across runs, machines and orderings."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") / 2.0 ** 64 < eval_fraction else "train"


class _RawArray:
    """An .npy file of unknown length, written row by row: rows go to a raw file, the header is
    prepended when the count is known."""

    def __init__(self, path: Path, row_shape: tuple[int, ...], dtype):
        self.path, self.row_shape, self.dtype = path, row_shape, np.dtype(dtype)
        self._raw = open(path.with_suffix(".raw"), "wb")
        self.count = 0

    def append(self, row: np.ndarray) -> None:
        row = np.ascontiguousarray(row, dtype=self.dtype)
        assert row.shape == self.row_shape
        self._raw.write(row.tobytes())
        self.count += 1

    def close(self) -> None:
        """Close the raw file (also when writing failed half-way, so that nothing holds it open)."""
        self._raw.close()

    def finish(self) -> None:
        self._raw.close()
        raw = self.path.with_suffix(".raw")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.count, *self.row_shape)}
        with open(self.path, "wb") as out, open(raw, "rb") as rows:
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(rows, out, 1 << 24)
        raw.unlink()


def _landmark_problem(landmarks: np.ndarray, box_in_crop: np.ndarray, size: int, max_outside: float) -> str | None:
    """Why detected landmarks (68, 2) crop px do not belong to the detected face, or None."""
    outside = np.mean(((landmarks < -0.5) | (landmarks > size - 0.5)).any(1))
    if outside > max_outside:
        return f"{outside:.0%} of the landmarks lie outside the crop"
    x, y, w, h = box_in_crop
    cx, cy = landmarks.mean(0)
    if not (x <= cx <= x + w and y <= cy <= y + h):
        return "the landmarks' centre lies outside the face box"
    lx, ly, lw, lh = points_box(landmarks)
    extent = np.sqrt(max(lw, 0.0) * max(lh, 0.0)) / max(w, h)
    if not 0.4 <= extent <= 2.0:
        return f"the landmarks span {extent:.2f} of the face box (expected 0.4 to 2)"
    return None


def prepare(samples: Iterable[Sample], out_dir: str | Path, policy: CropPolicy | None = None,
            split_seed: int = 0, eval_fraction: float = 0.05, min_iou: float = 0.1,
            gt_box_fallback: bool = False, max_outside: float = 0.1, progress: bool = True) -> dict:
    """Detect, crop, landmark and split `samples` into the folder out_dir (format: module docstring);
    returns the summary (also summary.json).

    policy: the crop (margin, smallest face, crop size; the schema's defaults when None). min_iou:
    with an annotated face, a detection must overlap it this much.
    gt_box_fallback: when Haar finds nothing at an annotated face (often in profile), crop around the
    ground-truth landmarks instead (box_source 'gt'); off by default, as in the paper. max_outside:
    the largest fraction of detected landmarks allowed outside the crop.
    """
    if not 0.0 <= eval_fraction <= 1.0:
        raise MofaError(f"eval_fraction must be within [0, 1], got {eval_fraction}")
    final = Path(out_dir)
    with atomic_dir(final) as partial:  # no half-prepared folder under the final name, none left on an error
        summary = _prepare_into(partial, list(samples), policy or CropPolicy.schema_default(), split_seed,
                                eval_fraction, min_iou, gt_box_fallback, max_outside, progress)
    log.info("real faces: %d of %d kept in %.1f s -> %s; dropped %s", summary["kept"], summary["total"],
             summary["seconds"], final, summary["dropped"])
    return summary


def _prepare_into(partial: Path, samples: list[Sample], policy: CropPolicy, split_seed: int,
                  eval_fraction: float, min_iou: float, gt_box_fallback: bool,
                  max_outside: float, progress: bool) -> dict:
    """`prepare` into the empty folder `partial`; returns the summary."""
    image_size = policy.image_size
    images = _RawArray(partial / "images.npy", (image_size, image_size, 3), np.uint8)
    landmarks, confidences, gt_landmarks, transforms = [], [], [], []
    rows = []
    start = time.perf_counter()
    bar = tqdm(total=len(samples), desc="prepare real faces", unit="img", disable=not progress, leave=False)
    with FrameReader() as reader, MediaPipeLandmarker() as landmarker, contextlib.closing(images):
        for sample in samples:
            row = {"index": -1, "id": sample.id, "source": sample.source, "image_path": str(sample.image_path),
                   "frame_index": sample.frame_index, "kept": False, "reason": "", "detail": "",
                   "split": split_of(sample.group, split_seed, eval_fraction), "dataset_split": sample.dataset_split,
                   "yaw_deg": sample.yaw_deg}
            result = _prepare_one(sample, reader, landmarker, row, policy, min_iou, gt_box_fallback, max_outside)
            if result is None:
                log.info("dropped %s: %s (%s)", sample.id, row["reason"], row["detail"])
            else:
                crop, points, confidence, gt, transform = result
                row.update(index=images.count, kept=True)
                images.append(crop)
                landmarks.append(points)
                confidences.append(confidence)
                gt_landmarks.append(gt)
                transforms.append(transform)
            rows.append(row)
            bar.update(1)
    bar.close()
    images.finish()
    seconds = time.perf_counter() - start

    arrays = {"landmarks": (landmarks, (N_LANDMARKS, 2), np.float32),
              "landmark_confidence": (confidences, (N_LANDMARKS,), np.float32),
              "gt_landmarks": (gt_landmarks, (N_LANDMARKS, 2), np.float32),
              "transforms": (transforms, (2, 3), np.float64)}
    for name, (values, shape, dtype) in arrays.items():
        np.save(partial / f"{name}.npy", np.asarray(values, dtype=dtype).reshape(-1, *shape))
    manifest = pd.DataFrame(rows).reindex(columns=list(MANIFEST_COLUMNS))
    manifest["frame_index"] = manifest["frame_index"].astype("Int64")
    manifest.to_csv(partial / "manifest.csv", index=False, float_format="%.6g")

    summary = _summary(manifest, seconds, dict(image_size=image_size, margin=policy.margin, split_seed=split_seed,
                                               eval_fraction=eval_fraction, min_face_px=policy.min_face_px,
                                               min_iou=min_iou, gt_box_fallback=gt_box_fallback,
                                               max_outside=max_outside), landmarker.version)
    (partial / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _prepare_one(sample: Sample, reader: FrameReader, landmarker: MediaPipeLandmarker, row: dict,
                 policy: CropPolicy, min_iou: float, gt_box_fallback: bool, max_outside: float):
    """One sample: fills `row`; returns (crop, landmarks, confidence, gt, transform) or None, with
    row['reason'] and row['detail'] set, when the sample is dropped."""
    def drop(reason: str, detail: str) -> None:
        row.update(reason=reason, detail=detail)

    if sample.problem:
        return drop(UNREADABLE, sample.problem)
    try:
        rgb = reader.read(sample.image_path, sample.frame_index)
    except UnreadableImage as e:
        return drop(UNREADABLE, str(e))
    except cv2.error as e:
        return drop(UNREADABLE, f"OpenCV error: {str(e).strip().splitlines()[-1]}")
    row.update(image_height=rgb.shape[0], image_width=rgb.shape[1])

    boxes = detect_faces(rgb, min_size_px=policy.haar_min_px)
    chosen, iou = choose_face(boxes, sample.hint_box, min_iou)
    row["box_iou"] = iou
    if chosen is not None:
        box, row["box_source"] = boxes[chosen], "haar"
    elif gt_box_fallback and sample.gt_landmarks is not None:
        box, row["box_source"] = gt_box(sample.gt_landmarks), "gt"
    elif len(boxes) == 0:
        return drop(NO_FACE, "the Haar cascade found no face")
    else:
        return drop(NO_FACE, f"no detection overlaps the annotated face (best IoU {iou:.2f} < {min_iou})")
    row.update(box_x=box[0], box_y=box[1], box_w=box[2], box_h=box[3])
    if (small := policy.too_small(box)) is not None:
        return drop(TOO_SMALL, small)

    window = policy.window(box)
    transform = window.transform
    crop = window.crop(rgb)
    found = landmarker.landmarks68(crop)
    if found is None:
        return drop(LANDMARKS_FAILED, "MediaPipe found no face mesh in the crop")
    points, confidence = found
    row["detection_score"] = float(confidence[0])
    corner = image_to_crop(box[None, :2], transform)[0]
    problem = _landmark_problem(points, np.r_[corner, box[2:] * transform[0, 0]], policy.image_size, max_outside)
    if problem:
        return drop(LANDMARKS_OUTSIDE, problem)

    gt = np.full((N_LANDMARKS, 2), np.nan)
    if sample.gt_landmarks is not None:
        gt = image_to_crop(sample.gt_landmarks, transform)
        row["nme_vs_gt"] = float(nme_aflw2000(points[None], gt[None])[0])
    return crop, points, confidence, gt, transform


def _summary(manifest: pd.DataFrame, seconds: float, options: dict, mediapipe_version: str) -> dict:
    kept = manifest[manifest.kept]
    dropped = manifest[~manifest.kept]
    summary = {
        "format_version": FORMAT_VERSION,
        "total": len(manifest), "kept": len(kept),
        "dropped": {reason: int((dropped.reason == reason).sum()) for reason in REASONS},
        "kept_by_split": {split: int((kept.split == split).sum()) for split in SPLITS},
        "by_source": {source: {"kept": int(group.kept.sum()), "dropped": int((~group.kept).sum())}
                      for source, group in manifest.groupby("source")},
        "box_source": {k: int(v) for k, v in kept.box_source.value_counts().items()},
        "options": options,
        "detectors": {"faces": f"OpenCV {cv2.__version__} haarcascade_frontalface_default.xml",
                      "landmarks": f"mediapipe {mediapipe_version} face mesh -> MEDIAPIPE_TO_IBUG68 "
                                   "(mofa/realdata/landmarks68.py)"},
        "seconds": round(seconds, 2), "images_per_second": round(len(manifest) / max(seconds, 1e-9), 2),
    }
    with_gt = kept[kept.nme_vs_gt.notna()]
    if len(with_gt):
        summary["landmark_nme_vs_gt"] = summarise(with_gt.nme_vs_gt.to_numpy())
        with_yaw = with_gt[with_gt.yaw_deg.notna()]
        if len(with_yaw):
            summary["landmark_nme_vs_gt_by_yaw"] = nme_table(with_yaw.nme_vs_gt.to_numpy(), with_yaw.yaw_deg.to_numpy())
    return summary


class RealFaceSet:
    """A prepared folder's kept images of one split ('train', 'eval' or 'all'), memory-mapped:
    `batch(indices)` gives tensors in the layout of SyntheticSet.batch."""

    ARRAYS = ("images", "landmarks", "landmark_confidence", "gt_landmarks")

    def __init__(self, folder: str | Path, split: str = "all"):
        self.folder = Path(folder)
        if split not in (*SPLITS, "all"):
            raise MofaError(f"real-face split must be one of {[*SPLITS, 'all']}, got '{split}'")
        summary_path = self.folder / "summary.json"
        if not summary_path.is_file():
            raise MofaError(f"{self.folder}: not a prepared real-face folder (no summary.json); run the preparation")
        self.summary = io.read_json(summary_path, "real-face summary")
        if self.summary.get("format_version") != FORMAT_VERSION:
            raise MofaError(f"{summary_path}: format {self.summary.get('format_version')}, expected {FORMAT_VERSION}; "
                            "prepare the folder again")
        manifest = io.read_csv(self.folder / "manifest.csv", ("index", "id", "kept", "split", "yaw_deg"),
                               "real-face manifest", keep_default_na=True)
        kept = manifest[manifest.kept.astype(bool)].sort_values("index")
        self.manifest = kept if split == "all" else kept[kept.split == split]
        self.rows = self.manifest["index"].to_numpy(np.int64)
        self.arrays = {k: io.load_npy(self.folder / f"{k}.npy") for k in (*self.ARRAYS, "transforms")}
        for name, array in self.arrays.items():
            if len(self.rows) and self.rows.max() >= len(array):
                raise MofaError(f"{self.folder / name}.npy: {len(array)} rows, but manifest.csv names row "
                                f"{self.rows.max()}; delete the folder and prepare it again")

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def ids(self) -> list[str]:
        return self.manifest["id"].tolist()

    @property
    def yaw_deg(self) -> np.ndarray:
        """(N,) float64 ground-truth yaw in degrees, NaN where unknown."""
        return self.manifest["yaw_deg"].to_numpy(np.float64)

    @property
    def transforms(self) -> np.ndarray:
        """(N, 2, 3) float64 crop <- image affine of each image (detect.crop_to_image inverts it)."""
        return np.asarray(self.arrays["transforms"][self.rows])

    def batch(self, indices, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """indices into this split -> images (B, 3, S, S) float in [0, 1]; landmarks (B, 68, 2) crop px,
        detected; landmark_confidence (B, 68); gt_landmarks (B, 68, 2) crop px, NaN where none."""
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        order = np.argsort(rows, kind="stable")
        back = np.argsort(order, kind="stable")
        sorted_rows = rows[order]  # memory-mapped reads in file order
        out = {k: torch.from_numpy(np.ascontiguousarray(self.arrays[k][sorted_rows][back])) for k in self.ARRAYS}
        out["images"] = out["images"].permute(0, 3, 1, 2).float().div_(255.0)
        return {k: v.to(device) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    """python -m mofa.realdata.prepare DATASET OUT [--root FOLDER] [--margin ...]: one corpus -> OUT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="aflw2000, ibug68, celeba, lfw, 300vw or facewarehouse")
    parser.add_argument("out", type=Path)
    parser.add_argument("--root", type=Path, help=f"dataset folder (default: {', '.join(ENV_VARS.values())})")
    parser.add_argument("--limit", type=int, help="the first N images only")
    default = CropPolicy.schema_default()
    parser.add_argument("--margin", type=float, default=default.margin)
    parser.add_argument("--image-size", type=int, default=default.image_size)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--eval-fraction", type=float, default=0.05)
    parser.add_argument("--min-face-px", type=int, default=default.min_face_px)
    parser.add_argument("--gt-box-fallback", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        root = args.root or root_from_env(args.dataset)
        samples = list(adapter_for(args.dataset)(root))[: args.limit]
        summary = prepare(samples, args.out, CropPolicy(args.margin, args.min_face_px, args.image_size),
                          split_seed=args.split_seed, eval_fraction=args.eval_fraction,
                          gt_box_fallback=args.gt_box_fallback)
    except MofaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
