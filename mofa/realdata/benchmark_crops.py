"""The crops a landmark benchmark scores: every image of a folder, none dropped.

The training data's preparation (mofa.realdata.prepare) prunes: no Haar detection, a small face, a
MediaPipe failure. A benchmark must not: the encoder needs no landmark detector at test time, and a
benchmark that drops its hardest images cannot sit beside published tables. Here each image is cropped
around the Haar detection that overlaps its ground-truth landmark box, and where there is none, around
a box made from the ground truth (as 3DDFA's AFLW2000-3D protocol crops from its roi boxes); the crop
geometry is the preparation's (mofa.realdata.crop_policy). An unreadable image or one without ground
truth (a malformed `.mat`, a file that does not decode) is skipped with its reason logged and counted
in the summary: the one thing a benchmark cannot score.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from mofa.errors import MofaError
from mofa.landmarks import N_LANDMARKS
from mofa.realdata.adapters import Sample
from mofa.realdata.crop_policy import CropPolicy
from mofa.realdata.detect import choose_face, detect_faces, image_to_crop
from mofa.realdata.images import FrameReader, UnreadableImage
from mofa.realdata.prepare import gt_box

log = logging.getLogger(__name__)


class BenchmarkCrops:
    """Every sample's crop, in memory, with the interface of RealFaceSet that scoring reads: `len`,
    `manifest` (id, yaw_deg, box_source, box_iou), `transforms` (N, 2, 3) crop <- image and
    `batch(indices)` -> images (B, 3, S, S) in [0, 1], gt_landmarks (B, 68, 2) crop px."""

    def __init__(self, samples: Iterable[Sample], policy: CropPolicy, min_iou: float = 0.1, progress: bool = False):
        samples = list(samples)
        image_size = policy.image_size
        images = np.zeros((len(samples), image_size, image_size, 3), np.uint8)
        gt = np.zeros((len(samples), N_LANDMARKS, 2), np.float32)
        transforms = np.zeros((len(samples), 2, 3), np.float64)
        rows, problems, keep = [], [], []
        with FrameReader() as reader:
            for i, sample in enumerate(tqdm(samples, desc="benchmark crops", unit="img", disable=not progress,
                                            leave=False)):
                if sample.gt_landmarks is None:
                    problems.append(sample.problem or f"{sample.image_path}: no ground-truth landmarks")
                    continue
                try:
                    rgb = reader.read(sample.image_path, sample.frame_index)
                except UnreadableImage as exc:
                    problems.append(f"{sample.image_path}: {exc}")
                    log.warning("skipping %s: %s", sample.image_path, exc)
                    continue
                keep.append(i)
                boxes = detect_faces(rgb, min_size_px=policy.haar_min_px)
                chosen, iou = choose_face(boxes, sample.hint_box, min_iou)
                box, source = (boxes[chosen], "haar") if chosen is not None else (gt_box(sample.gt_landmarks), "gt")
                window = policy.window(box)
                images[i] = window.crop(rgb)
                transforms[i] = window.transform
                gt[i] = image_to_crop(sample.gt_landmarks, window.transform)
                rows.append({"id": sample.id, "yaw_deg": np.nan if sample.yaw_deg is None else sample.yaw_deg,
                             "box_source": source, "box_iou": iou})
        if not keep:
            raise MofaError(f"none of the {len(samples)} images could be read"
                            + (f" ({problems[0]}{f'; {len(problems) - 1} more' if len(problems) > 1 else ''})"
                               if problems else ""))
        self.images, self.gt_landmarks, self._transforms = images[keep], gt[keep], transforms[keep]
        self.folder_images, self.problems = len(samples), problems
        self.manifest = pd.DataFrame(rows, columns=["id", "yaw_deg", "box_source", "box_iou"])

    def __len__(self) -> int:
        return len(self.images)

    @property
    def ids(self) -> list[str]:
        return self.manifest["id"].tolist()

    @property
    def transforms(self) -> np.ndarray:
        return self._transforms

    @property
    def summary(self) -> dict:
        """Image counts (the folder's, those scored, those unreadable) and crop boxes by source."""
        return {"total": self.folder_images, "scored": len(self), "unreadable": len(self.problems),
                "box_source": {k: int(v) for k, v in self.manifest.box_source.value_counts().items()}}

    def batch(self, indices, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        index = np.asarray(indices, dtype=np.int64)
        images = torch.from_numpy(self.images[index]).permute(0, 3, 1, 2).float().div_(255.0)
        return {"images": images.to(device), "gt_landmarks": torch.from_numpy(self.gt_landmarks[index]).to(device)}
