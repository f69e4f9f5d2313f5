"""The evaluation metrics, one definition each, shared by every experiment (DESIGN.md section 4).

Batched, NumPy in and out (torch tensors are accepted and detached); one value per image, float64.
Units: millimetres in 3D, pixels in 2D, colours linear RGB in [0, 1].
"""
from __future__ import annotations

import numpy as np

from mofa.landmarks import LANDMARKS_46, N_LANDMARKS


def _np(x) -> np.ndarray:
    """numpy array or torch tensor -> float64 numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _nan_safe_mean(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    """total / count, NaN where count is 0, without a warning."""
    out = np.full(np.shape(total), np.nan)
    np.divide(total, count, out=out, where=count > 0)
    return out


# -- 3D -----------------------------------------------------------------------------------------------

def similarity_align(pred_vertices, true_vertices, vertex_mask=None) -> np.ndarray:
    """The prediction moved by the least-squares translation and isotropic scale onto the truth
    (no rotation). pred_vertices, true_vertices: (B, N, 3); vertex_mask: (N,) bool vertices that define
    the fit, or None for all -> (B, N, 3) aligned prediction.

    Closed form of min_{s,t} sum_i ||s p_i + t - q_i||^2: s = <P_c, Q_c> / <P_c, P_c> over the centred
    point sets, then t puts the scaled prediction's centroid on the truth's.
    """
    pred, true = _np(pred_vertices), _np(true_vertices)
    mask = np.ones(pred.shape[1], dtype=bool) if vertex_mask is None else np.asarray(vertex_mask, dtype=bool)
    pred_centre = pred[:, mask].mean(1, keepdims=True)
    true_centre = true[:, mask].mean(1, keepdims=True)
    pc, tc = pred[:, mask] - pred_centre, true[:, mask] - true_centre
    scale = (pc * tc).sum((1, 2)) / (pc * pc).sum((1, 2))
    return scale[:, None, None] * (pred - pred_centre) + true_centre


def geometric_error(pred_vertices, true_vertices, vertex_mask=None) -> np.ndarray:
    """Mean point-to-point distance (mm) between estimated and true posed meshes, after the best
    translation and isotropic scale of the estimate (`similarity_align`); the estimate's own rotation
    is kept, so pose errors count.

    pred_vertices, true_vertices: (B, N, 3) mm, same topology; vertex_mask: (N,) bool face region used
    for both the fit and the mean, or None for all -> (B,) mm.
    """
    true = _np(true_vertices)
    mask = np.ones(true.shape[1], dtype=bool) if vertex_mask is None else np.asarray(vertex_mask, dtype=bool)
    aligned = similarity_align(pred_vertices, true, mask)
    return np.linalg.norm(aligned[:, mask] - true[:, mask], axis=-1).mean(1)


def rotation_error(pred_rotations, true_rotations) -> np.ndarray:
    """Geodesic angle (degrees) between estimated and true head rotations: the angle of
    R_pred^T R_true. pred_rotations, true_rotations: (B, 3, 3) rotation matrices -> (B,) in [0, 180].

    Unlike `geometric_error` it isolates pose: a face turned away from the camera shows here even where
    shape and scale absorb part of it in the point distances.
    """
    pred, true = _np(pred_rotations), _np(true_rotations)
    trace = np.einsum("bji,bji->b", pred, true)  # trace(pred^T true)
    return np.degrees(np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0)))


def angle_errors(pred_angles, true_angles) -> np.ndarray:
    """Absolute per-angle differences (degrees, wrapped to [0, 180]) of Euler angles, e.g. the code's
    (pitch, yaw, roll). pred_angles, true_angles: (B, K) radians -> (B, K) degrees. Says which axis a
    pose error is in; `rotation_error` is the parameterisation-free measure."""
    diff = np.degrees(_np(pred_angles) - _np(true_angles))
    return np.abs((diff + 180.0) % 360.0 - 180.0)


# -- images ---------------------------------------------------------------------------------------------

def photometric_error(rendered, target, mask) -> np.ndarray:
    """Mean Euclidean RGB distance over the visible face pixels.

    rendered, target: (B, H, W, 3) linear RGB in [0, 1]; mask: (B, H, W) bool, pixels covered by the
    rendered face -> (B,). NaN for an image whose mask is empty (nothing to compare: `summarise` skips it).
    """
    rendered, target = _np(rendered), _np(target)
    mask = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask, dtype=bool)
    distance = np.linalg.norm(rendered - target, axis=-1)  # (B, H, W)
    return _nan_safe_mean(np.where(mask, distance, 0.0).sum((1, 2)), mask.sum((1, 2)))


# -- 2D landmarks ---------------------------------------------------------------------------------------

def _check_68(name: str, points: np.ndarray) -> None:
    if points.ndim != 3 or points.shape[1:] != (N_LANDMARKS, 2):
        raise ValueError(f"{name} must be (B, 68, 2) px in the iBUG order, got {points.shape}")


def landmark_error(pred, true, subset=LANDMARKS_46) -> np.ndarray:
    """Mean 2D distance (px) over the landmarks in `subset` (default: the 46 of `mofa.landmarks`;
    None: all 68). pred, true: (B, 68, 2) px in the iBUG order -> (B,) px."""
    pred, true = _np(pred), _np(true)
    _check_68("pred", pred)
    _check_68("true", true)
    index = list(range(N_LANDMARKS)) if subset is None else list(subset)
    return np.linalg.norm(pred[:, index] - true[:, index], axis=-1).mean(1)


def nme_aflw2000(pred, true) -> np.ndarray:
    """Normalised mean error of the AFLW2000-3D protocol (3DDFA): mean 2D distance over all 68 points
    divided by sqrt(w h) of the ground-truth landmarks' bounding box.

    pred, true: (B, 68, 2) px -> (B,) as a fraction (papers print 100x this, in %).
    """
    pred, true = _np(pred), _np(true)
    _check_68("pred", pred)
    _check_68("true", true)
    extent = true.max(1) - true.min(1)  # (B, 2) box width, height
    return np.linalg.norm(pred - true, axis=-1).mean(1) / np.sqrt(extent[:, 0] * extent[:, 1])


YAW_BINS: dict[str, tuple[float, float]] = {"0-30": (0.0, 30.0), "30-60": (30.0, 60.0), "60-90": (60.0, float("inf"))}
"""The AFLW2000-3D absolute-yaw bins in degrees as 3DDFA's benchmark (benchmark_aflw2000.py) computes them:
[0, 30], (30, 60] and |yaw| > 60 with no upper cap, labelled "60-90" as in the published tables, so that
every image is in a bin (AFLW2000-3D has a few |yaw| > 90 labels, e.g. 118.9, -351.2)."""


def yaw_bins(yaw_deg) -> np.ndarray:
    """yaw_deg: (B,) degrees (sign ignored) -> (B,) int bin index into YAW_BINS: 0 for |yaw| <= 30,
    1 for 30 < |yaw| <= 60, 2 for |yaw| > 60; -1 for NaN only."""
    yaw = np.abs(_np(yaw_deg))
    out = np.full(yaw.shape, -1, dtype=np.int64)
    for index, (low, high) in enumerate(YAW_BINS.values()):
        out[(yaw <= high) & ((yaw > low) | (index == 0))] = index
    return out


def nme_table(nme, yaw_deg) -> dict[str, float]:
    """The AFLW2000-3D table row: mean NME per yaw bin and the mean of the three bin means (the
    protocol's "mean", which balances the bins), plus the image count of each bin.

    nme: (B,) from `nme_aflw2000`; yaw_deg: (B,) -> {"0-30", "30-60", "60-90", "mean",
    "n_0-30", "n_30-60", "n_60-90"}; an empty bin's mean is NaN, and so is "mean" then.
    Images with a NaN yaw or NME are left out.
    """
    nme = _np(nme)
    bins = yaw_bins(yaw_deg)
    row: dict[str, float] = {}
    counts: dict[str, float] = {}
    for index, name in enumerate(YAW_BINS):
        values = nme[(bins == index) & np.isfinite(nme)]
        row[name] = float(values.mean()) if values.size else float("nan")
        counts[f"n_{name}"] = int(values.size)
    row["mean"] = float(np.mean([row[name] for name in YAW_BINS]))
    return {**row, **counts}


# -- summaries ------------------------------------------------------------------------------------------

def summarise(values) -> dict[str, float]:
    """values: any shape; NaN (and infinite) entries ignored -> {mean, median, std (population), p90,
    n (finite values)}; the statistics are NaN when no finite value is left."""
    v = _np(values).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        nan = float("nan")
        return {"mean": nan, "median": nan, "std": nan, "p90": nan, "n": 0}
    return {"mean": float(v.mean()), "median": float(np.median(v)), "std": float(v.std()),
            "p90": float(np.percentile(v, 90)), "n": int(v.size)}
