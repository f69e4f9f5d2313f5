"""Face detection and the square crop around a detection.

Two detectors: OpenCV's Haar cascade (`detect_faces`), the paper's, which the real-data preparation
keeps; and MediaPipe's BlazeFace (`detect_faces_mediapipe`, both models shipped in the mediapipe wheel),
which `mofa reconstruct` uses on users' photos: on the 19 ibug68 photos Haar misses 5 annotated faces
and puts boxes on no face, BlazeFace finds all 19 (`mofa detection-rate` prints the comparison).
`suppress_duplicates` keeps one box per face.

Coordinates: image and crop pixels are 0-based with integer values at pixel centres, x the column.
A crop is described by an affine transform T (2, 3), crop <- image: crop_px = T[:, :2] @ image_px
+ T[:, 2]; `image_to_crop` and `crop_to_image` apply it and its inverse. Boxes are (x, y, w, h).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import sys
import warnings

import cv2
import numpy as np

CASCADE = "haarcascade_frontalface_default.xml"


@functools.lru_cache(maxsize=1)
def _cascade() -> cv2.CascadeClassifier:
    path = cv2.data.haarcascades + CASCADE
    classifier = cv2.CascadeClassifier(path)
    if classifier.empty():
        raise RuntimeError(f"{path}: OpenCV could not load its own Haar cascade; reinstall opencv-python-headless")
    return classifier


def detect_faces(rgb: np.ndarray, min_size_px: int = 24, max_side_px: int = 800,
                 scale_factor: float = 1.1, min_neighbors: int = 5) -> np.ndarray:
    """Haar-cascade face boxes. rgb: (H, W, 3) uint8 -> (K, 4) float64 (x, y, w, h) image px,
    largest first. Images larger than max_side_px are searched at reduced size (faster; a face
    below min_size_px there would be pruned as too small anyway)."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    scale = min(1.0, max_side_px / max(grey.shape))
    if scale < 1.0:
        grey = cv2.resize(grey, (round(grey.shape[1] * scale), round(grey.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    grey = cv2.equalizeHist(grey)
    side = max(1, int(min_size_px * scale))
    found = _cascade().detectMultiScale(grey, scaleFactor=scale_factor, minNeighbors=min_neighbors, minSize=(side, side))
    boxes = np.asarray(found, dtype=np.float64).reshape(-1, 4)
    if scale < 1.0:  # the box edges of the reduced image, back to the full image's pixel centres
        boxes[:, :2] = (boxes[:, :2] + 0.5) / scale - 0.5
        boxes[:, 2:] /= scale
    return boxes[np.argsort(-boxes[:, 2] * boxes[:, 3], kind="stable")]


# BlazeFace's box is smaller and lower than Haar's: the Haar-equivalent box is square, its side
# HAAR_FROM_MEDIAPIPE[0] times sqrt(w h) of BlazeFace's, its centre moved by HAAR_FROM_MEDIAPIPE[1] of
# that side in y (medians over the 625 AFLW2000-3D images where both find the annotated face; x: -0.01),
# so that reconstruct's crops frame faces as the encoders saw them in training (Haar crops).
# MEDIAPIPE_MIN_SCORE: 0.5 (MediaPipe's default) keeps 5 more AFLW2000 faces of 1000 but also a box on a
# chin and a hand in ibug68's helen_18489332_4; the lowest-scoring annotated ibug68 face scores 0.63.
HAAR_FROM_MEDIAPIPE = (1.11, -0.10)
MEDIAPIPE_MIN_SCORE = 0.6
TILE_FRACTION = 0.6
"""The full-range model sees the image at 192 px: faces below ~8 % of the image side are found by
running it again on 2 x 2 overlapping tiles of this fraction of each side."""


@contextlib.contextmanager
def native_stderr_silenced():
    """fd 2 to /dev/null for the block: MediaPipe's C++ start-up (TFLite's 'Created TensorFlow Lite
    XNNPACK delegate', absl's feedback-manager warnings) writes there past Python's logging. Failures
    still arrive as Python exceptions."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def _protobuf_deprecation_ignored():
    """MediaPipe's solutions call a protobuf API that warns on every image; the warning is theirs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype", category=UserWarning)
        yield


@functools.lru_cache(maxsize=2)
def _blazeface(model_selection: int, min_score: float):
    with _protobuf_deprecation_ignored(), native_stderr_silenced():
        import mediapipe as mp
        detector = mp.solutions.face_detection.FaceDetection(model_selection=model_selection,
                                                             min_detection_confidence=min_score)
        detector.process(np.zeros((64, 64, 3), np.uint8))  # the graph starts (and talks) on its first image
    return detector


def _blazeface_boxes(rgb: np.ndarray, model_selection: int, min_score: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = rgb.shape[:2]
    with _protobuf_deprecation_ignored():
        found = _blazeface(model_selection, min_score).process(np.ascontiguousarray(rgb)).detections or []
    boxes = [(d.location_data.relative_bounding_box.xmin * w, d.location_data.relative_bounding_box.ymin * h,
              d.location_data.relative_bounding_box.width * w, d.location_data.relative_bounding_box.height * h)
             for d in found]
    return np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray([d.score[0] for d in found], np.float64)


def detect_faces_mediapipe(rgb: np.ndarray, min_score: float = MEDIAPIPE_MIN_SCORE,
                           min_size_px: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe BlazeFace boxes, as Haar-equivalent boxes (HAAR_FROM_MEDIAPIPE), one per face.
    rgb: (H, W, 3) uint8 -> ((K, 4) float64 (x, y, w, h) image px, (K,) scores in [0, 1]), best first.

    Runs the short-range model on the whole image, the full-range model on the whole image and on
    2 x 2 overlapping tiles (TILE_FRACTION); a tile's box that touches a tile edge inside the image is
    a cut face and is dropped; then `suppress_duplicates`."""
    h, w = rgb.shape[:2]
    all_boxes, all_scores = [], []
    for selection in (0, 1):
        boxes, scores = _blazeface_boxes(rgb, selection, min_score)
        all_boxes.append(boxes)
        all_scores.append(scores)
    tw, th = int(round(w * TILE_FRACTION)), int(round(h * TILE_FRACTION))
    for x0 in (0, w - tw):
        for y0 in (0, h - th):
            boxes, scores = _blazeface_boxes(rgb[y0:y0 + th, x0:x0 + tw], 1, min_score)
            edge = 2.0
            inner = (((boxes[:, 0] <= edge) & (x0 > 0)) | ((boxes[:, 1] <= edge) & (y0 > 0))
                     | ((boxes[:, 0] + boxes[:, 2] >= tw - edge) & (x0 + tw < w))
                     | ((boxes[:, 1] + boxes[:, 3] >= th - edge) & (y0 + th < h)))
            all_boxes.append(boxes[~inner] + [x0, y0, 0, 0])
            all_scores.append(scores[~inner])
    boxes, scores = np.concatenate(all_boxes), np.concatenate(all_scores)
    side = np.sqrt(np.clip(boxes[:, 2] * boxes[:, 3], 0, None))
    keep = (side >= min_size_px) & (scores >= min_score)  # MediaPipe's own threshold lets some just below pass
    boxes, scores, side = boxes[keep], scores[keep], side[keep]
    scale, shift = HAAR_FROM_MEDIAPIPE
    centre = boxes[:, :2] + boxes[:, 2:] / 2 + np.c_[np.zeros_like(side), shift * side]
    boxes = np.c_[centre - scale * side[:, None] / 2, scale * side, scale * side]
    return suppress_duplicates(boxes, scores)


def suppress_duplicates(boxes: np.ndarray, scores: np.ndarray | None = None, max_iou: float = 0.3,
                        max_nested: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """One box per face: greedily, best score first (largest first without scores), drop every box
    whose IoU with a kept box exceeds max_iou, or whose intersection with it exceeds max_nested of the
    smaller box (a box nested in another). boxes: (K, 4) (x, y, w, h) -> (boxes, scores) kept, in that order."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = boxes[:, 2] * boxes[:, 3] if scores is None else np.asarray(scores, np.float64)
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    for i in order:
        if kept:
            other = boxes[kept]
            low = np.maximum(other[:, :2], boxes[i, :2])
            high = np.minimum(other[:, :2] + other[:, 2:], boxes[i, :2] + boxes[i, 2:])
            inter = np.prod(np.clip(high - low, 0, None), axis=1)
            areas = other[:, 2] * other[:, 3]
            area = boxes[i, 2] * boxes[i, 3]
            smaller = np.maximum(np.minimum(areas, area), 1e-9)
            if np.any(inter / np.maximum(areas + area - inter, 1e-9) > max_iou) or np.any(inter / smaller > max_nested):
                continue
        kept.append(int(i))
    return boxes[kept], scores[kept]


def box_iou(boxes: np.ndarray, box) -> np.ndarray:
    """boxes: (K, 4), box: (4,), all (x, y, w, h) -> (K,) intersection over union."""
    boxes, box = np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(box, dtype=np.float64)
    low = np.maximum(boxes[:, :2], box[:2])
    high = np.minimum(boxes[:, :2] + boxes[:, 2:], box[:2] + box[2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=1)
    union = boxes[:, 2] * boxes[:, 3] + box[2] * box[3] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def choose_face(boxes: np.ndarray, hint_box=None, min_iou: float = 0.1) -> tuple[int | None, float]:
    """Which detection is the sample's face: with a hint (the ground-truth landmark box, or a corpus'
    own face box) the detection overlapping it most, if its IoU reaches min_iou; else the largest.
    boxes: (K, 4) largest first -> (index or None, IoU with the hint, NaN without one)."""
    if len(boxes) == 0:
        return None, float("nan")
    if hint_box is None:
        return 0, float("nan")
    iou = box_iou(boxes, hint_box)
    best = int(np.argmax(iou))
    return (best if iou[best] >= min_iou else None), float(iou[best])


@dataclasses.dataclass(frozen=True)
class CropWindow:
    """A square window of the image, `side` px from (x0, y0) (integers; it may extend past the image,
    which pads with black), resized to `size` x `size`."""
    x0: int
    y0: int
    side: int
    size: int

    @classmethod
    def around(cls, box, margin: float, size: int) -> "CropWindow":
        """The square centred on box (x, y, w, h) whose side is max(w, h) * (1 + 2 margin)."""
        x, y, w, h = (float(v) for v in box)
        side = max(1, int(round(max(w, h) * (1.0 + 2.0 * margin))))
        # the box's centre in pixel-centre coordinates is x + (w - 1) / 2; the window's is x0 + (side - 1) / 2
        x0 = int(math.floor(x + (w - side) / 2.0 + 0.5))
        y0 = int(math.floor(y + (h - side) / 2.0 + 0.5))
        return cls(x0, y0, side, size)

    @property
    def transform(self) -> np.ndarray:
        """(2, 3) float64 crop <- image. cv2.resize maps output pixel centre u to input
        (u + 0.5) / s - 0.5 with s = size / side, so image px x lands on s (x - x0 + 0.5) - 0.5."""
        s = self.size / self.side
        return np.array([[s, 0.0, s * (0.5 - self.x0) - 0.5],
                         [0.0, s, s * (0.5 - self.y0) - 0.5]])

    def crop(self, image: np.ndarray) -> np.ndarray:
        """image: (H, W, C) -> (size, size, C), outside the image black."""
        h, w = image.shape[:2]
        window = np.zeros((self.side, self.side) + image.shape[2:], dtype=image.dtype)
        ix0, iy0 = max(self.x0, 0), max(self.y0, 0)
        ix1, iy1 = min(self.x0 + self.side, w), min(self.y0 + self.side, h)
        if ix1 > ix0 and iy1 > iy0:
            window[iy0 - self.y0:iy1 - self.y0, ix0 - self.x0:ix1 - self.x0] = image[iy0:iy1, ix0:ix1]
        interpolation = cv2.INTER_AREA if self.side > self.size else cv2.INTER_LINEAR
        return cv2.resize(window, (self.size, self.size), interpolation=interpolation)


def image_to_crop(points, transform) -> np.ndarray:
    """points: (..., K, 2) image px; transform: (2, 3) or (..., 2, 3) crop <- image
    -> (..., K, 2) float64 crop px."""
    points, transform = np.asarray(points, dtype=np.float64), np.asarray(transform, dtype=np.float64)
    return np.einsum("...ij,...kj->...ki", transform[..., :2], points) + transform[..., None, :, 2]


def crop_to_image(points, transform) -> np.ndarray:
    """The inverse of `image_to_crop`: points (..., K, 2) crop px -> (..., K, 2) float64 image px."""
    points, transform = np.asarray(points, dtype=np.float64), np.asarray(transform, dtype=np.float64)
    inverse = np.linalg.inv(transform[..., :2])
    return np.einsum("...ij,...kj->...ki", inverse, points - transform[..., None, :, 2])
