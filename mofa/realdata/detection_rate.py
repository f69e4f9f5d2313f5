"""How often each face detector finds the annotated face: `mofa detection-rate` (this module's `main`).

Per detector and dataset: images read, the annotated face found (a box whose centre lies inside the
ground-truth landmark box and whose side sqrt(w h) is MATCH_SCALE times the landmark box's), missed,
duplicates (further boxes on that same face), other boxes (on no annotated face: false detections, or
people the dataset does not annotate, so an upper bound of the false ones) and milliseconds per image.

Detectors: `haar` (the preparation's, mofa.realdata.detect.detect_faces), `haar_nms` (the same with
suppress_duplicates), `mediapipe` (what `mofa reconstruct` uses: detect_faces_mediapipe),
`mediapipe_short` (BlazeFace short-range alone, as mp.solutions.face_detection gives it), and two
references from dlib (the test extras' dlib-bin): `dlib_hog` (HOG + linear SVM) and `dlib_cnn` (the
MMOD CNN of face_recognition_models), both with one upsampling of the image capped at 800 px.
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable, Iterable

from typing import TYPE_CHECKING

from mofa.errors import MofaError

if TYPE_CHECKING:  # numpy, pandas and the detectors load when used: `mofa --help` stays quick
    import numpy as np
    import pandas as pd

    from mofa.realdata.adapters import Sample

MATCH_SCALE = (0.5, 2.5)
DLIB_MAX_SIDE = 800


def _dlib_boxes(rgb: np.ndarray, cnn: bool) -> np.ndarray:
    import cv2
    import numpy as np
    detector = _dlib_detector(cnn)
    scale = min(1.0, DLIB_MAX_SIDE / max(rgb.shape[:2]))
    small = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else rgb
    found = detector(np.ascontiguousarray(small), 1)
    rects = [d.rect if cnn else d for d in found]
    boxes = np.array([(r.left(), r.top(), r.width(), r.height()) for r in rects], np.float64).reshape(-1, 4)
    return boxes / scale


@functools.lru_cache(maxsize=2)
def _dlib_detector(cnn: bool):
    try:
        import dlib
    except ImportError:
        raise MofaError("the dlib reference detectors need dlib: pip install dlib-bin (the project's test extras)") from None
    if not cnn:
        return dlib.get_frontal_face_detector()
    import importlib.util
    from pathlib import Path
    spec = importlib.util.find_spec("face_recognition_models")  # its __init__ needs pkg_resources: not imported
    path = Path(spec.origin).parent / "models" / "mmod_human_face_detector.dat" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise MofaError("dlib_cnn needs mmod_human_face_detector.dat from face_recognition_models==0.3.0")
    return dlib.cnn_face_detection_model_v1(str(path))


DETECTORS = ("haar", "haar_nms", "mediapipe", "mediapipe_short", "dlib_hog", "dlib_cnn")


def detector(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The detector called `name` (DETECTORS): rgb (H, W, 3) uint8 -> (K, 4) boxes (x, y, w, h) px."""
    from mofa.realdata import detect
    return {"haar": detect.detect_faces,
            "haar_nms": lambda rgb: detect.suppress_duplicates(detect.detect_faces(rgb))[0],
            "mediapipe": lambda rgb: detect.detect_faces_mediapipe(rgb)[0],
            "mediapipe_short": lambda rgb: detect._blazeface_boxes(rgb, 0, detect.MEDIAPIPE_MIN_SCORE)[0],
            "dlib_hog": lambda rgb: _dlib_boxes(rgb, cnn=False),
            "dlib_cnn": lambda rgb: _dlib_boxes(rgb, cnn=True)}[name]


def matches(boxes: np.ndarray, landmark_box) -> np.ndarray:
    """(K,) bool: which boxes (K, 4) lie on the face of the landmark box (x, y, w, h)."""
    import numpy as np
    x, y, w, h = landmark_box
    centre = boxes[:, :2] + boxes[:, 2:] / 2
    side = np.sqrt(np.clip(boxes[:, 2] * boxes[:, 3], 0, None)) / max(np.sqrt(w * h), 1e-9)
    inside = (centre[:, 0] >= x) & (centre[:, 0] <= x + w) & (centre[:, 1] >= y) & (centre[:, 1] <= y + h)
    return inside & (side >= MATCH_SCALE[0]) & (side <= MATCH_SCALE[1])


def detection_rate(samples: Iterable[Sample], detectors: list[str], progress: bool = False) -> pd.DataFrame:
    """One row per (detector, image): id, boxes, on_face (boxes on the annotated face), ms."""
    import numpy as np
    import pandas as pd

    from mofa.realdata.images import FrameReader, UnreadableImage
    run = {name: detector(name) for name in detectors}
    rows = []
    with FrameReader() as reader:
        for sample in samples:
            if sample.problem or sample.hint_box is None:
                print(f"mofa detection-rate: {sample.image_path}: skipped, {sample.problem or 'no annotated face'}",
                      file=sys.stderr)
                continue
            try:
                rgb = reader.read(sample.image_path, sample.frame_index)
            except UnreadableImage as exc:
                print(f"mofa detection-rate: {sample.image_path}: skipped, {exc}", file=sys.stderr)
                continue
            for name in detectors:
                start = time.perf_counter()
                boxes = np.asarray(run[name](rgb), np.float64).reshape(-1, 4)
                ms = 1000 * (time.perf_counter() - start)
                on_face = int(matches(boxes, sample.hint_box).sum())
                rows.append({"detector": name, "id": sample.id, "boxes": len(boxes), "on_face": on_face, "ms": ms})
            if progress:
                print(sample.id, file=sys.stderr)
    return pd.DataFrame(rows, columns=["detector", "id", "boxes", "on_face", "ms"])


def summary_table(per_image: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Per detector: images, found, missed, duplicates, other boxes, ms per image (median)."""
    import pandas as pd
    rows = []
    for name, group in per_image.groupby("detector", sort=False):
        rows.append({"dataset": dataset, "detector": name, "images": len(group),
                     "found": int((group.on_face > 0).sum()), "missed": int((group.on_face == 0).sum()),
                     "duplicates": int((group.on_face - 1).clip(lower=0).sum()),
                     "other_boxes": int((group.boxes - group.on_face).sum()),
                     "images_with_other": int((group.boxes > group.on_face).sum()),
                     "ms_median": round(float(group.ms.median()), 1)})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    from mofa.errors import ArgumentParser
    parser = ArgumentParser(prog="mofa detection-rate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datasets", nargs="+", default=["aflw2000", "ibug68"], choices=["aflw2000", "ibug68"],
                        help="read from MOFA_AFLW2000_DIR / MOFA_IBUG68_DIR")
    parser.add_argument("--detectors", nargs="+", default=["haar", "haar_nms", "mediapipe", "mediapipe_short",
                                                           "dlib_hog"], choices=DETECTORS)
    from mofa.cli import positive_int
    parser.add_argument("--limit", type=positive_int, help="the first N images of each dataset only")
    parser.add_argument("--per-image", action="store_true", help="also print each image's counts")


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from mofa.realdata.adapters import adapter_for, root_from_env
    tables = []
    for dataset in args.datasets:
        samples = list(adapter_for(dataset)(root_from_env(dataset)))[: args.limit]
        per_image = detection_rate(samples, args.detectors)
        if per_image.empty:
            raise MofaError(f"{root_from_env(dataset)}: none of the {len(samples)} {dataset} images could be "
                            "scored (each skipped above, with its reason)")
        if args.per_image:
            print(per_image.to_string(index=False, float_format=lambda v: f"{v:.0f}"))
        tables.append(summary_table(per_image, dataset))
    print(pd.concat(tables).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
