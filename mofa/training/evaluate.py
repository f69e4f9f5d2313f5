"""Evaluation of an encoder on held-out images: codes -> decoder -> the metrics of `mofa.metrics`."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from mofa import metrics
from mofa.decoder import Decoder, DecodedFace, euler_to_matrix
from mofa.decoder.layout import ANGLES
from mofa.render.raycast import render
from mofa.training.trainer import predict_codes


def decode(decoder: Decoder, codes: torch.Tensor) -> DecodedFace:
    """The decoder's output for codes (B, D), without gradients, on the decoder's device."""
    with torch.no_grad():
        return decoder(codes.to(decoder.mean_shape.device))


def render_decoded(decoder: Decoder, decoded: DecodedFace, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Decoded faces (the decoder's region) rendered over their input images (B, 3, H, W) in [0, 1]
    -> rendered (B, H, W, 3), mask (B, H, W) bool."""
    verts, cols = decoded.vertices.cpu().numpy(), decoded.colours.clamp(0, 1).cpu().numpy()
    tris = decoder.triangles.cpu().numpy()
    backgrounds = images.permute(0, 2, 3, 1).cpu().numpy()
    shots = [render(v, tris, c, decoder.camera, bg, cull_back_faces=True) for v, c, bg in zip(verts, cols, backgrounds)]
    return np.stack([s.image for s in shots]), np.stack([s.mask for s in shots])


def render_estimates(decoder: Decoder, codes: torch.Tensor, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The faces of codes (B, D) rendered over their input images: `render_decoded` of `decode`."""
    return render_decoded(decoder, decode(decoder, codes), images)


def image_metrics(decoder: Decoder, decoded: DecodedFace, images: torch.Tensor,
                  landmarks: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Per-image photometric error (rendered estimate vs input over its face pixels) and, with
    ground-truth landmarks (B, 68, 2) px, landmark error over the 46 points (px)."""
    rendered, mask = render_decoded(decoder, decoded, images)
    out = {"photometric_error": metrics.photometric_error(rendered, images.permute(0, 2, 3, 1).cpu().numpy(), mask)}
    if landmarks is not None:
        screen = decoded.screen[:, decoder.landmarks]
        out["landmark_error"] = metrics.landmark_error(screen.cpu().numpy(), landmarks.cpu().numpy())
    return out


def mean_and_median(per_image: dict[str, np.ndarray]) -> dict[str, float]:
    """{metric: (B,) values} -> {metric_mean, metric_median}, ignoring NaN (mofa.metrics.summarise)."""
    out = {}
    for name, values in per_image.items():
        summary = metrics.summarise(values)
        out[f"{name}_mean"], out[f"{name}_median"] = summary["mean"], summary["median"]
    return out


def synthetic_metrics(decoder: Decoder, codes: torch.Tensor, batch: dict) -> dict[str, np.ndarray]:
    """Per-image errors of codes (B, D) on a synthetic batch (SyntheticSet.batch): geometric error (mm,
    face region, after translation and isotropic scale), photometric error, landmark error (46 points,
    px), and the pose on its own: rotation error (geodesic, deg) and pitch, yaw and roll errors (deg)."""
    decoded = decode(decoder, codes)
    rot = decoder.layout.slices["rotation"]
    pred_angles, true_angles = codes[:, rot].cpu(), batch["codes"][:, rot].to(codes.dtype).cpu()
    axes = metrics.angle_errors(pred_angles, true_angles)
    return {"geometric_error": metrics.geometric_error(decoded.vertices.cpu().numpy(), batch["vertices"].numpy()),
            **image_metrics(decoder, decoded, batch["images"], batch["landmarks"]),
            "rotation_error": metrics.rotation_error(euler_to_matrix(pred_angles), euler_to_matrix(true_angles)),
            **{f"{name}_error": axes[:, i] for i, name in enumerate(ANGLES)}}


def real_metrics(decoder: Decoder, codes: torch.Tensor, batch: dict) -> dict[str, np.ndarray]:
    """Per-image errors of codes (B, D) on a real-face batch (RealFaceSet.batch): landmark error (46
    points, crop px) against the ground-truth landmarks (NaN where an image has none), photometric
    error, and the 68-point NME of the AFLW2000-3D protocol (fraction of sqrt(w h) of the GT box)."""
    decoded = decode(decoder, codes)
    per_image = image_metrics(decoder, decoded, batch["images"], batch["gt_landmarks"])
    screen = decoded.screen[:, decoder.landmarks].cpu().numpy()
    per_image["nme"] = metrics.nme_aflw2000(screen, batch["gt_landmarks"].numpy())
    return per_image


def _per_image(score, decoder: Decoder, encoder: torch.nn.Module, image_set, input_size: int,
               batch_size: int, n_images: int | None) -> dict[str, np.ndarray]:
    device = decoder.mean_shape.device
    n = len(image_set) if n_images is None else min(n_images, len(image_set))
    parts = []
    for start in range(0, n, batch_size):
        batch = image_set.batch(np.arange(start, min(n, start + batch_size)), "cpu")
        codes = predict_codes(encoder, batch["images"].to(device), input_size).cpu()
        parts.append(score(decoder, codes, batch))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


def synthetic_per_image(decoder: Decoder, encoder: torch.nn.Module, test_set, input_size: int,
                        n_images: int | None = None, batch_size: int = 32) -> dict[str, np.ndarray]:
    """`synthetic_metrics` of an encoder over the first n_images (all when None) of a synthetic split:
    {metric: (N,)}, the values `synthetic_evaluator` averages."""
    return _per_image(synthetic_metrics, decoder, encoder, test_set, input_size, batch_size, n_images)


def real_per_image(decoder: Decoder, encoder: torch.nn.Module, image_set, input_size: int,
                   n_images: int | None = None, batch_size: int = 32) -> dict[str, np.ndarray]:
    """`real_metrics` of an encoder over the first n_images (all when None) of a real-face set:
    {metric: (N,)}."""
    return _per_image(real_metrics, decoder, encoder, image_set, input_size, batch_size, n_images)


def synthetic_evaluator(decoder: Decoder, test_set, n_images: int, input_size: int,
                        device: torch.device | str = "cpu") -> Callable[[torch.nn.Module], dict]:
    """A function encoder -> {metric_mean, metric_median} of `synthetic_metrics` on the first n_images
    of a synthetic split."""
    batch = test_set.batch(np.arange(min(n_images, len(test_set))), "cpu")

    def evaluate(encoder: torch.nn.Module) -> dict:
        codes = predict_codes(encoder, batch["images"].to(device), input_size).cpu()
        return mean_and_median(synthetic_metrics(decoder, codes, batch))

    return evaluate


def real_evaluator(decoder: Decoder, eval_set, n_images: int, input_size: int,
                   device: torch.device | str = "cpu") -> Callable[[torch.nn.Module], dict]:
    """A function encoder -> {metric_mean, metric_median} of `real_metrics` on the first n_images of a
    real-face set (BenchmarkCrops or a RealFaceSet)."""
    batch = eval_set.batch(np.arange(min(n_images, len(eval_set))), "cpu")

    def evaluate(encoder: torch.nn.Module) -> dict:
        codes = predict_codes(encoder, batch["images"].to(device), input_size).cpu()
        return mean_and_median(real_metrics(decoder, codes, batch))

    return evaluate
