"""Dataset adapters: each real face corpus, in its own published layout, as one stream of `Sample`s.

Every adapter is `iter_<dataset>(root) -> Iterator[Sample]`, sorted, so a run is reproducible. Landmark
coordinates are converted on the way in to this project's convention: 0-based pixel coordinates whose
integer values are pixel centres, x the column, y the row, 68 points in the iBUG order.

Layouts read (a missing root or an empty one is a MofaError naming the folder):
  aflw2000       imageNNNNN.jpg + imageNNNNN.mat (`pt3d_68` 3x68, `Pose_Para` pitch, yaw, roll in rad)
  ibug68         any tree of images with a sibling 300-W `.pts` (68 points, 1-based), e.g. 300-W itself
  celeba         img_align_celeba/ or img_celeba/ (also under Img/), list files in root, Anno/ or Eval/
  lfw            name/name_NNNN.jpg (also under lfw/ or lfw-deepfunneled/)
  300vw          clip/vid.avi + clip/annot/NNNNNN.pts (1-based frame numbers, 1-based coordinates)
  facewarehouse  Tester_k/TrainingPose/pose_N.png
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from mofa.errors import MofaError
from mofa.landmarks import N_LANDMARKS
from mofa.realdata.images import IMAGE_SUFFIXES


log = logging.getLogger(__name__)

ENV_VARS: dict[str, str] = {"aflw2000": "MOFA_AFLW2000_DIR", "ibug68": "MOFA_IBUG68_DIR"}
"""The environment variables that name the embedded real-face folders (DESIGN.md section 3)."""


@dataclasses.dataclass(frozen=True, eq=False)  # eq by identity: it holds an array
class Sample:
    """One face image to prepare.

    id: unique, stable name ("<source>/<relative name>"); image_path: the image file, or the video
    for a frame; source: the adapter's name; gt_landmarks: (68, 2) float64 image px (0-based, iBUG
    order) or None; yaw_deg: ground-truth head yaw in degrees or None; frame_index: 0-based frame
    of a video, or None for a still image.
    hint_box: (x, y, w, h) image px of an annotated face region (the GT landmark box by default) that
    picks among several detections; split_key: what the train/eval hash uses (default: id; a video
    clip or a person, so that near-duplicates stay on one side); dataset_split: the corpus' own
    partition where it has one (CelebA: train, val, test), recorded in the manifest.
    problem: why the sample's annotation could not be read (a malformed `.mat` or `.pts`, or an AFLW2000
    image without its `.mat`): the preparation drops it with this reason and goes on with the others.
    """
    id: str
    image_path: Path
    source: str
    gt_landmarks: np.ndarray | None = None
    yaw_deg: float | None = None
    frame_index: int | None = None
    hint_box: tuple[float, float, float, float] | None = None
    split_key: str | None = None
    dataset_split: str | None = None
    problem: str | None = None

    def __post_init__(self):
        if self.gt_landmarks is not None:
            points = np.asarray(self.gt_landmarks, dtype=np.float64)
            if points.shape != (N_LANDMARKS, 2):
                raise ValueError(f"{self.id}: gt_landmarks must be (68, 2), got {points.shape}")
            object.__setattr__(self, "gt_landmarks", points)
            if self.hint_box is None:
                object.__setattr__(self, "hint_box", points_box(points))

    @property
    def group(self) -> str:
        """The key of the deterministic train/eval split."""
        return self.split_key or self.id


def points_box(points: np.ndarray) -> tuple[float, float, float, float]:
    """(K, 2) px -> (x, y, w, h) of their bounding box."""
    low, high = np.min(points, 0), np.max(points, 0)
    return float(low[0]), float(low[1]), float(high[0] - low[0]), float(high[1] - low[1])


def read_pts(path: str | Path) -> np.ndarray:
    """A 300-W `.pts` file (header, `{`, one `x y` line per point, `}`; 1-based pixels)
    -> (K, 2) float64 0-based px."""
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise MofaError(f"{path}: cannot read the landmark file ({e.strerror})") from None
    match = re.search(r"\{(.*?)\}", text, re.S)
    n_header = re.search(r"n_points:\s*(\d+)", text)
    if not match or not n_header:
        raise MofaError(f"{path}: not a 300-W .pts file (expected 'n_points: K' and a '{{ ... }}' block of 'x y' lines)")
    try:
        points = np.array([line.split()[:2] for line in match.group(1).strip().splitlines() if line.strip()],
                          dtype=np.float64)
    except ValueError:
        raise MofaError(f"{path}: a line inside '{{ ... }}' is not two numbers 'x y'") from None
    if points.shape != (int(n_header.group(1)), 2):
        raise MofaError(f"{path}: header says {n_header.group(1)} points, the block holds {len(points)}")
    return points - 1.0


def _root(root: str | Path, name: str) -> Path:
    path = Path(root).expanduser()
    if path.exists() and not path.is_dir():
        raise MofaError(f"{path}: a file, not a folder; give the {name} dataset's folder")
    if not path.is_dir():
        hint = f" (set {ENV_VARS[name]})" if name in ENV_VARS else ""
        raise MofaError(f"{path}: no such folder for the {name} dataset{hint}")
    return path


def _nothing_found(root: Path, name: str, expected: str) -> MofaError:
    return MofaError(f"{root}: no {name} images found (expected {expected}); point the {name} path at the dataset's root")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


# -- the adapters -------------------------------------------------------------------------------------

def iter_aflw2000(root: str | Path) -> Iterator[Sample]:
    """AFLW2000-3D: imageNNNNN.jpg + .mat. GT: the 2D part of `pt3d_68` (image px as stored: the
    published evaluation code compares with it directly); yaw: `Pose_Para[1]` in degrees."""
    from scipy.io import loadmat

    root = _root(root, "aflw2000")
    images = sorted(root.glob("*.jpg"))
    if not any(p.with_suffix(".mat").is_file() for p in images):
        raise _nothing_found(root, "aflw2000", "imageNNNNN.jpg with a matching imageNNNNN.mat")
    for image in images:
        mat_path = image.with_suffix(".mat")
        if not mat_path.is_file():  # an image the benchmark cannot score: counted, with its reason
            yield _unreadable(f"aflw2000/{image.stem}", image, "aflw2000",
                              f"{image}: no {mat_path.name} annotation beside it")
            continue
        try:
            mat = loadmat(mat_path, variable_names=("pt3d_68", "Pose_Para"))
            points = np.asarray(mat["pt3d_68"], dtype=np.float64)[:2].T
            yaw = float(np.degrees(np.asarray(mat["Pose_Para"], dtype=np.float64).ravel()[1]))
            if points.shape != (N_LANDMARKS, 2) or not np.isfinite(points).all() or not np.isfinite(yaw):
                raise ValueError(f"pt3d_68 of shape {np.asarray(mat['pt3d_68']).shape} or a non-finite value")
            if np.ptp(points, axis=0).min() <= 0:  # the NME divides by the size of their box
                raise ValueError("the 68 points of pt3d_68 span no area")
        except Exception as e:  # noqa: BLE001 - scipy raises many types for a malformed file
            detail = " ".join(str(e).split())[:200] or type(e).__name__
            yield _unreadable(f"aflw2000/{image.stem}", image, "aflw2000",
                              f"{mat_path}: not an AFLW2000-3D annotation (need pt3d_68 3x68 and Pose_Para): {detail}")
            continue
        yield Sample(id=f"aflw2000/{image.stem}", image_path=image, source="aflw2000",
                     gt_landmarks=points, yaw_deg=yaw)


def _unreadable(sample_id: str, image: Path, source: str, problem: str) -> Sample:
    """A sample whose annotation is malformed or missing: logged, and dropped by the preparation with `problem`."""
    log.warning("skipping %s", problem)
    return Sample(id=sample_id, image_path=image, source=source, problem=problem)


def iter_ibug68(root: str | Path) -> Iterator[Sample]:
    """300-W-style folders: every image with a sibling `.pts` of 68 points, at any depth."""
    root = _root(root, "ibug68")
    found = False
    for pts in sorted(root.rglob("*.pts")):
        images = sorted(p for p in pts.parent.glob(pts.stem + ".*") if _is_image(p))
        if not images:
            continue
        found = True
        name = pts.relative_to(root).with_suffix("").as_posix()
        try:
            points = read_pts(pts)
            if len(points) != N_LANDMARKS:
                raise MofaError(f"{pts}: {len(points)} points, expected the 68 of the iBUG scheme")
        except MofaError as e:
            yield _unreadable(f"ibug68/{name}", images[0], "ibug68", str(e))
            continue
        yield Sample(id=f"ibug68/{name}", image_path=images[0], source="ibug68", gt_landmarks=points)
    if not found:
        raise _nothing_found(root, "ibug68", "image files with a sibling 300-W .pts file of 68 points")


CELEBA_PARTITIONS = {"0": "train", "1": "val", "2": "test"}


def _find_file(root: Path, name: str) -> Path | None:
    for folder in (root, root / "Anno", root / "Eval", root / "list"):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_celeba_table(path: Path, n_values: int) -> dict[str, list[str]]:
    """A CelebA list file: optional count line, optional header line, then `name v1 v2 ...`."""
    table: dict[str, list[str]] = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == n_values + 1 and Path(parts[0]).suffix.lower() in IMAGE_SUFFIXES:
                table[parts[0]] = parts[1:]
    return table


def iter_celeba(root: str | Path, variant: str | None = None) -> Iterator[Sample]:
    """CelebA: `img_celeba/` (in the wild; variant "wild") or `img_align_celeba/` (aligned; "aligned"),
    directly under root or under Img/; None picks in-the-wild when both are present. The list files
    (root, Anno/ or Eval/) are used where present: list_bbox_celeba.txt (in the wild) or the box of
    the five list_landmarks[_align]_celeba.txt points picks the annotated face among detections;
    list_eval_partition.txt becomes `dataset_split`. No 68-point ground truth."""
    root = _root(root, "celeba")
    folders = {"wild": "img_celeba", "aligned": "img_align_celeba"}
    if variant not in (None, *folders):
        raise MofaError(f"celeba variant must be 'wild', 'aligned' or None, got '{variant}'")
    candidates = [v for v in ((variant,) if variant else ("wild", "aligned"))
                  if (root / folders[v]).is_dir() or (root / "Img" / folders[v]).is_dir()]
    if not candidates:
        raise _nothing_found(root, "celeba", "an img_celeba/ or img_align_celeba/ folder, directly or under Img/")
    variant = candidates[0]
    image_dir = root / folders[variant] if (root / folders[variant]).is_dir() else root / "Img" / folders[variant]
    landmark_file = _find_file(root, "list_landmarks_celeba.txt" if variant == "wild" else "list_landmarks_align_celeba.txt")
    bbox_file = _find_file(root, "list_bbox_celeba.txt") if variant == "wild" else None
    partition_file = _find_file(root, "list_eval_partition.txt")
    landmarks = _read_celeba_table(landmark_file, 10) if landmark_file else {}
    boxes = _read_celeba_table(bbox_file, 4) if bbox_file else {}
    partition = _read_celeba_table(partition_file, 1) if partition_file else {}
    images = sorted(p for p in image_dir.iterdir() if _is_image(p))
    if not images:
        raise _nothing_found(image_dir, "celeba", "NNNNNN.jpg files")
    for image in images:
        hint = None
        if image.name in boxes:
            hint = tuple(float(v) for v in boxes[image.name])
        elif image.name in landmarks:
            five = np.asarray(landmarks[image.name], dtype=np.float64).reshape(5, 2) - 1.0
            hint = points_box(five)
        split = partition.get(image.name)
        yield Sample(id=f"celeba/{image.stem}", image_path=image, source="celeba", hint_box=hint,
                     dataset_split=CELEBA_PARTITIONS.get(split[0]) if split else None)


def iter_lfw(root: str | Path) -> Iterator[Sample]:
    """LFW: `name/name_NNNN.jpg` (root may also hold them under lfw/ or lfw-deepfunneled/). The split
    key is the person, so that one person's photos fall on one side of the split."""
    root = _root(root, "lfw")
    for sub in ("lfw", "lfw-deepfunneled", "lfw_funneled"):
        if (root / sub).is_dir() and not any(_is_image(p) for p in root.glob("*/*.jpg")):
            root = root / sub
            break
    pattern = re.compile(r"^(.+)_(\d{4})$")
    found = False
    for person in sorted(p for p in root.iterdir() if p.is_dir()):
        for image in sorted(person.glob("*.jpg")):
            match = pattern.match(image.stem)
            if not match or match.group(1) != person.name:
                continue
            found = True
            yield Sample(id=f"lfw/{image.stem}", image_path=image, source="lfw", split_key=f"lfw/{person.name}")
    if not found:
        raise _nothing_found(root, "lfw", "name/name_NNNN.jpg")


def iter_300vw(root: str | Path, frame_step: int = 1) -> Iterator[Sample]:
    """300-VW: `clip/vid.avi` with `clip/annot/NNNNNN.pts` (frame NNNNNN, 1-based) for every
    `frame_step`-th annotated frame; frames are decoded from the video. The split key is the clip."""
    root = _root(root, "300vw")
    clips = sorted(p.parent for p in root.glob("*/vid.avi") if (p.parent / "annot").is_dir())
    if not clips:
        raise _nothing_found(root, "300vw", "clip folders with vid.avi and annot/*.pts")
    for clip in clips:
        annotations = sorted(clip.glob("annot/*.pts"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1)
        for pts in [p for p in annotations if p.stem.isdigit()][::frame_step]:
            points = read_pts(pts)
            if len(points) != N_LANDMARKS:
                raise MofaError(f"{pts}: {len(points)} points, expected the 68 of the iBUG scheme")
            frame = int(pts.stem) - 1
            yield Sample(id=f"300vw/{clip.name}/{frame + 1:06d}", image_path=clip / "vid.avi", source="300vw",
                         gt_landmarks=points, frame_index=frame, split_key=f"300vw/{clip.name}")


def iter_facewarehouse(root: str | Path) -> Iterator[Sample]:
    """FaceWarehouse: `Tester_k/TrainingPose/pose_N.png` (its 74-point .land files are another
    landmark scheme and are not read). The split key is the tester."""
    root = _root(root, "facewarehouse")
    number = lambda p: int(re.sub(r"\D", "", p.name) or -1)  # noqa: E731  Tester_2 before Tester_10
    found = False
    for tester in sorted(root.glob("Tester_*"), key=number):
        for image in sorted((tester / "TrainingPose").glob("pose_*.png"), key=number):
            found = True
            yield Sample(id=f"facewarehouse/{tester.name}/{image.stem}", image_path=image,
                         source="facewarehouse", split_key=f"facewarehouse/{tester.name}")
    if not found:
        raise _nothing_found(root, "facewarehouse", "Tester_k/TrainingPose/pose_N.png")


ADAPTERS: dict[str, Callable[..., Iterator[Sample]]] = {
    "aflw2000": iter_aflw2000,
    "ibug68": iter_ibug68,
    "celeba": iter_celeba,
    "lfw": iter_lfw,
    "300vw": iter_300vw,
    "facewarehouse": iter_facewarehouse,
}


def adapter_for(name: str) -> Callable[..., Iterator[Sample]]:
    """The adapter registered under `name` (a key of ADAPTERS)."""
    try:
        return ADAPTERS[name]
    except KeyError:
        raise MofaError(f"unknown real-face dataset '{name}'; expected one of {sorted(ADAPTERS)}") from None


def root_from_env(name: str) -> Path:
    """The folder named by the dataset's environment variable (ENV_VARS)."""
    if name not in ENV_VARS:
        raise MofaError(f"dataset '{name}' has no environment variable; give its folder explicitly")
    value = os.environ.get(ENV_VARS[name])
    if not value:
        raise MofaError(f"{ENV_VARS[name]} is not set: point it at the {name} folder (see real-faces/README.md)")
    return Path(value)
