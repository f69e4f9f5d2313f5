"""A training source that mixes synthetic images and real photos in every batch (the default preset
trains its real-data encoders on synthetic images plus the AFLW2000 training split)."""
from __future__ import annotations

import numpy as np
import torch

from mofa.errors import MofaError

KEYS = ("images", "landmarks", "landmark_confidence")


def _image_shape(source) -> tuple[int, ...]:
    return tuple(source.arrays["images"].shape[1:])


class MixedSource:
    """Batches with round(synthetic_fraction * B) synthetic images first, then real photos.

    synthetic: a SyntheticSet (its landmarks are the projected model landmarks; their confidence is
    `landmark_visible`); real: a RealFaceSet split (detected landmarks and their confidence).

    Index space: with both sources in use an index i in [0, len) stands for the pair
    (i // len(real), i % len(real)); a synthetic position of the batch takes the pair's first member,
    a real position its second. A uniform draw of indices is then a uniform draw from each source,
    and the batch depends only on the indices given (the trainer's exact resume relies on that).
    With synthetic_fraction 0 or 1 the index is simply into the one source used.
    """

    def __init__(self, synthetic, real, synthetic_fraction: float):
        if not 0.0 <= synthetic_fraction <= 1.0:
            raise MofaError(f"synthetic_fraction must be within [0, 1], got {synthetic_fraction}")
        self.synthetic, self.real, self.fraction = synthetic, real, float(synthetic_fraction)
        if self.fraction > 0 and len(synthetic) == 0:
            raise MofaError("mixed training source: the synthetic set is empty but synthetic_fraction > 0")
        if self.fraction < 1 and len(real) == 0:
            raise MofaError(f"mixed training source: the real training split of {getattr(real, 'folder', 'the real set')} "
                            "is empty but synthetic_fraction < 1; prepare more images or raise the fraction")
        if 0 < self.fraction < 1 and _image_shape(synthetic) != _image_shape(real):
            raise MofaError(f"mixed training source: synthetic images are {_image_shape(synthetic)}, real crops "
                            f"{_image_shape(real)}; prepare the real photos at the camera's image size")

    def __len__(self) -> int:
        if self.fraction == 0:
            return len(self.real)
        if self.fraction == 1:
            return len(self.synthetic)
        return len(self.synthetic) * len(self.real)

    def n_synthetic(self, batch_size: int) -> int:
        """How many of a batch of `batch_size` are synthetic."""
        return round(self.fraction * batch_size)

    def split(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """indices (B,) into this source -> (synthetic indices, real indices), in batch order."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"mixed source index out of range [0, {len(self)})")
        k = self.n_synthetic(len(indices))
        if self.fraction == 0:
            return indices[:0], indices
        if self.fraction == 1:
            return indices, indices[:0]
        n_real = len(self.real)
        return indices[:k] // n_real, indices[k:] % n_real

    def batch(self, indices, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """images (B, 3, S, S) in [0, 1]; landmarks (B, 68, 2) crop px; landmark_confidence (B, 68)
        float; is_synthetic (B,) bool. The synthetic images come first."""
        synthetic_idx, real_idx = self.split(indices)
        parts = []
        if len(synthetic_idx):
            b = self.synthetic.batch(synthetic_idx, "cpu")
            parts.append({"images": b["images"], "landmarks": b["landmarks"].float(),
                          "landmark_confidence": b["landmark_visible"].float(),
                          "is_synthetic": torch.ones(len(synthetic_idx), dtype=torch.bool)})
        if len(real_idx):
            b = self.real.batch(real_idx, "cpu")
            parts.append({"images": b["images"], "landmarks": b["landmarks"].float(),
                          "landmark_confidence": b["landmark_confidence"].float(),
                          "is_synthetic": torch.zeros(len(real_idx), dtype=torch.bool)})
        return {k: torch.cat([p[k] for p in parts]).to(device) for k in (*KEYS, "is_synthetic")}
