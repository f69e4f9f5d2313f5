"""Face detection (OpenCV's Haar cascade, as in the paper) and the square crop around a detection.

Coordinates: image and crop pixels are 0-based with integer values at pixel centres, x the column.
A crop is described by an affine transform T (2, 3), crop <- image: crop_px = T[:, :2] @ image_px
+ T[:, 2]; `image_to_crop` and `crop_to_image` apply it and its inverse. Boxes are (x, y, w, h).
"""
from __future__ import annotations

import dataclasses
import functools
import math

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
