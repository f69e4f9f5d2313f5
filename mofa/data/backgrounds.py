"""Augmented backgrounds for synthetic faces: procedural textures, noise, colour fields, photo crops.

Every function takes a NumPy Generator and returns (H, W, 3) float32 linear RGB in [0, 1].
"""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from mofa.errors import MofaError
from mofa.realdata.images import IMAGE_SUFFIXES

log = logging.getLogger(__name__)
KINDS = ("procedural", "noise", "colour_field", "folder")


def procedural(rng: np.random.Generator, size: int) -> np.ndarray:
    """Fractal value noise: 3-5 octaves of bicubically upsampled random grids, tinted by two colours."""
    field = np.zeros((size, size), np.float32)
    amplitude, cells = 1.0, int(rng.integers(2, 6))
    for _ in range(int(rng.integers(3, 6))):
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        field += amplitude * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        amplitude, cells = amplitude * 0.5, cells * 2
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-6)
    a, b = rng.random(3), rng.random(3)
    return _blend(a, b, field)


def noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Gaussian noise around a random colour, blurred at a random scale."""
    colour = rng.random(3)
    img = rng.normal(0, rng.uniform(0.05, 0.3), (size, size, 3))
    img.reshape(size, size * 3)[:] += np.tile(colour, size)  # ~10x faster than broadcasting over a last axis of 3
    sigma = rng.uniform(0.0, 4.0)
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    return np.clip(img, 0, 1, out=img).astype(np.float32)


def colour_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """A linear gradient between two random colours in a random direction."""
    angle = rng.uniform(0, 2 * np.pi)
    coords = np.arange(size) / (size - 1) - 0.5  # x of the columns, y of the rows
    t = np.clip(0.5 + coords[None, :] * np.cos(angle) + coords[:, None] * np.sin(angle), 0, 1)
    a, b = rng.random(3), rng.random(3)
    return _blend(a, b, t)


def _blend(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Colours a, b (3,) float64 mixed per pixel by t (H, W): (H, W, 3) float32 a + t (b - a), in float64.

    Computed as three (H, W) planes (contiguous loops; a broadcast over a last axis of 3 is several
    times slower), then interleaved by the float32 conversion."""
    planes = np.multiply.outer(b - a, t)  # (3, H, W) float64 whatever t's float type
    planes += a[:, None, None]
    return planes.transpose(1, 2, 0).astype(np.float32, order="C")


def list_images(folder: str | Path) -> list[Path]:
    """Image files in a folder (recursively), sorted, so choices are deterministic. A file whose first
    bytes are no image format OpenCV reads (empty, text, cut off before its header) is left out with
    its reason in the log."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MofaError(f"synthetic.background_folder: {folder} is not a folder")
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        if cv2.haveImageReader(str(path)):
            files.append(path)
        else:
            log.warning("background folder: skipping %s: not an image OpenCV reads", path)
    if not files:
        raise MofaError(f"synthetic.background_folder: {folder} holds no readable images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def photo_crop(rng: np.random.Generator, size: int, files: list[Path]) -> np.ndarray:
    """A random square crop of a random image from `files`, resized to size x size."""
    path = files[int(rng.integers(len(files)))]
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise MofaError(f"{path}: unreadable image (background folder)")
    h, w = img.shape[:2]
    side = int(rng.integers(max(8, min(h, w) // 3), min(h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = cv2.resize(img[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA)
    return (crop[..., ::-1] / 255.0).astype(np.float32)


def background_kinds(mix: dict[str, float], files: list[Path] | None = None) -> list[str]:
    """The kinds `mix` draws from: those of positive weight ('folder' only with files); a MofaError when none."""
    kinds = [k for k in KINDS if mix.get(k, 0) > 0 and (k != "folder" or files)]
    if not kinds:
        raise MofaError("synthetic.background_mix: no background kind with a positive weight is available"
                        + (" (folder needs synthetic.background_folder or MOFA_BACKGROUND_DIR)"
                           if mix.get("folder", 0) > 0 and not files else ""))
    return kinds


def sample_background(rng: np.random.Generator, size: int, mix: dict[str, float],
                      files: list[Path] | None = None) -> tuple[np.ndarray, str]:
    """Draw a background kind from `mix` (weights; 'folder' needs files) and make it."""
    kinds = background_kinds(mix, files)
    weights = np.array([mix[k] for k in kinds], dtype=float)
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    if kind == "folder":
        return photo_crop(rng, size, files), kind
    return {"procedural": procedural, "noise": noise, "colour_field": colour_field}[kind](rng, size), kind
