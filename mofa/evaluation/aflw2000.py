"""The AFLW2000-3D landmark benchmark of an encoder, as one chain: detection and crop of every image
(mofa.realdata.benchmark_crops: the Haar box, else one from the ground truth; no landmark detector), encoder, decoder, the 68 model landmarks projected back into the original
image through the crop transform, and the NME of the 3DDFA protocol (mean 2D distance over the 68
points / sqrt(w h) of the ground-truth landmark box) per |yaw| bin [0, 30], (30, 60] and > 60 (no upper
cap, as 3DDFA's benchmark; labelled 60-90) and the mean of the three bins. The ground truth is the
original `pt3d_68` annotation, not 3DDFA's re-annotation (papers report the two separately).

Every image of the folder is scored: none is dropped, and the table's image count is the folder's.
`mofa evaluate aflw2000` and the E3 stage both call this module.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mofa.metrics import YAW_BINS, landmark_error, nme_aflw2000, nme_table, yaw_bins
from mofa.realdata.crop_policy import CropPolicy
from mofa.realdata.detect import crop_to_image
from mofa.training.trainer import predict_codes


def predict_landmarks(encoder: torch.nn.Module, decoder, images: torch.Tensor, input_size: int,
                      batch_size: int = 32) -> np.ndarray:
    """images (B, 3, S, S) crops in [0, 1] -> (B, 68, 2) float64 crop px of the decoded face's 68
    model landmarks (the decoder's camera is the crop's)."""
    device = decoder.mean_shape.device
    out = []
    for start in range(0, len(images), batch_size):
        codes = predict_codes(encoder, images[start:start + batch_size].to(device), input_size, batch_size)
        with torch.no_grad():
            out.append(decoder(codes).screen[:, decoder.landmarks].double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 68, 2))


def landmarks_in_image(crop_points, transforms) -> np.ndarray:
    """crop_points (B, 68, 2) crop px; transforms (B, 2, 3) crop <- image -> (B, 68, 2) image px."""
    return crop_to_image(crop_points, transforms)


def evaluate_prepared(real_set, encoder: torch.nn.Module, decoder, input_size: int,
                      batch_size: int = 32) -> pd.DataFrame:
    """Score every image of a set of crops (BenchmarkCrops, or a prepared RealFaceSet) that has ground
    truth: one row per image
    with id, yaw_deg, yaw_bin, box_source, nme (fraction, 68 points, image px) and
    landmark_error_px (46 points, crop px); the predicted landmarks in image px are in `attrs`."""
    crops, gt_crop, image_pred = [], [], []
    n = len(real_set)
    transforms = real_set.transforms
    for start in range(0, n, batch_size):
        batch = real_set.batch(np.arange(start, min(n, start + batch_size)), "cpu")
        pred = predict_landmarks(encoder, decoder, batch["images"], input_size, batch_size)
        crops.append(pred)
        gt_crop.append(batch["gt_landmarks"].double().numpy())
        image_pred.append(landmarks_in_image(pred, transforms[start:start + len(pred)]))
    pred_crop = np.concatenate(crops) if crops else np.zeros((0, 68, 2))
    gt_crop_all = np.concatenate(gt_crop) if gt_crop else np.zeros((0, 68, 2))
    pred_image = np.concatenate(image_pred) if image_pred else np.zeros((0, 68, 2))
    gt_image = landmarks_in_image(gt_crop_all, transforms) if n else np.zeros((0, 68, 2))
    manifest = real_set.manifest.reset_index(drop=True)
    frame = pd.DataFrame({"id": manifest["id"], "yaw_deg": manifest["yaw_deg"].astype(float),
                          "box_source": manifest["box_source"]})
    frame["yaw_bin"] = [list(YAW_BINS)[b] if b >= 0 else "" for b in yaw_bins(frame["yaw_deg"].to_numpy())]
    frame["nme"] = nme_aflw2000(pred_image, gt_image) if n else []
    frame["landmark_error_px"] = landmark_error(pred_crop, gt_crop_all) if n else []
    has_gt = np.isfinite(gt_image).all(axis=(1, 2)) if n else np.zeros(0, bool)
    frame = frame[has_gt].reset_index(drop=True)
    frame.attrs["pred_image_px"] = pred_image[has_gt]
    frame.attrs["gt_image_px"] = gt_image[has_gt]
    return frame


@dataclasses.dataclass
class BenchmarkResult:
    """per_image: evaluate_prepared's frame; table: nme_table's row (fractions and counts);
    summary: the crops' summary (images, crop boxes by source)."""
    per_image: pd.DataFrame
    table: dict
    summary: dict

    def table_frame(self) -> pd.DataFrame:
        """One row per yaw bin and one for the mean: bin, nme, nme_percent, images."""
        rows = [{"bin": name, "nme": self.table[name], "nme_percent": 100 * self.table[name],
                 "images": self.table[f"n_{name}"]} for name in YAW_BINS]
        rows.append({"bin": "mean", "nme": self.table["mean"], "nme_percent": 100 * self.table["mean"],
                     "images": sum(self.table[f"n_{name}"] for name in YAW_BINS)})
        return pd.DataFrame(rows)

    def report(self) -> str:
        """The table and the image counts as text."""
        s = self.summary
        lines = [f"AFLW2000-3D NME (68 landmarks, / sqrt(w h) of the ground-truth box), {len(self.per_image)} images scored",
                 self.table_frame().to_string(index=False, float_format=lambda v: f"{v:.4f}"),
                 f"images: {s.get('total', '?')} in the folder, {len(self.per_image)} scored (crop box: "
                 f"{', '.join(f'{k} {v}' for k, v in s.get('box_source', {}).items()) or 'none'})"
                 + (f", unreadable: {s['unreadable']}" if s.get("unreadable") else "")]
        outside = len(self.per_image) - sum(self.table[f"n_{name}"] for name in YAW_BINS)
        if outside:
            lines.append(f"{outside} scored images have no yaw label or no NME and are outside the bins")
        return "\n".join(lines)


def score(real_set, encoder, decoder, input_size: int, summary: dict | None = None) -> BenchmarkResult:
    """evaluate_prepared + the per-bin table."""
    per_image = evaluate_prepared(real_set, encoder, decoder, input_size)
    table = nme_table(per_image["nme"].to_numpy(), per_image["yaw_deg"].to_numpy())
    return BenchmarkResult(per_image, table, summary if summary is not None else dict(real_set.summary))


def benchmark_folder(root: str | Path, encoder: torch.nn.Module, decoder, input_size: int, policy: CropPolicy,
                     max_images: int | None = None, progress: bool = False) -> BenchmarkResult:
    """The whole chain on a folder in the AFLW2000-3D layout (imageNNNNN.jpg + .mat): crop every image
    by `policy` (BenchmarkCrops), then score every one."""
    from mofa.realdata.adapters import iter_aflw2000
    from mofa.realdata.benchmark_crops import BenchmarkCrops

    samples = list(iter_aflw2000(root))[:max_images]
    crops = BenchmarkCrops(samples, policy, progress=progress)
    return score(crops, encoder, decoder, input_size, crops.summary)
