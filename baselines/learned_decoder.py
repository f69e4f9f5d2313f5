"""The learned decoder of the paper's Fig. 13 (Sec. 7): a network trained to map 3DMM codes to images
on synthetic images of the face model ("similar parameters as above": the conv autoencoder's decoder
half), compared with the analytic model-based decoder on image fidelity over the face region.

Also the image-fidelity measures of that comparison: l1, PSNR and SSIM (Wang et al. 2004) over a mask.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from baselines.conv_autoencoder import (
    ConvImageDecoder,
    ReconstructionLoss,
    fit_size,
    reconstruction_loss,
    seeded,
    train_adam,
)
from mofa.config import schema_default

# SSIM constants of Wang et al. 2004 (and skimage's `gaussian_weights=True` mode).
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


class LearnedDecoder(ConvImageDecoder):
    """Code (B, D) -> image (B, 3, S, S) in [0, 1]: FC to a 256 x S/16 x S/16 map (15 x 15 at 240 px),
    four 4x4 stride-2 transposed convolutions (128, 96, 64, 3). code_size: int or CodeLayout."""

    def __init__(self, code_size, image_size: int = 240, seed: int | None = None):
        with seeded(seed):
            super().__init__(code_size, image_size)


def train_learned_decoder(model: LearnedDecoder, source, iterations: int, batch_size: int = 32,
                          lr: float = 1e-3, seed: int = 0, loss: ReconstructionLoss = "l1",
                          device: str | torch.device = "cpu", checkpoint: Path | None = None,
                          checkpoint_every: int = schema_default("training", "checkpoint_every")) -> list[float]:
    """Fit code -> image on pairs drawn at random (seeded) from `source`: a SyntheticSet (its codes and
    images, drawn from the synthetic code distribution), or a tuple (codes, images[, masks]) with
    masks (N, H, W) bool restricting the loss (e.g. to the face). Images are resized to the model's
    size. Adam; returns the loss of every iteration. With `checkpoint`, resumable (`train_adam`)."""
    device = torch.device(device)

    def batch_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        images = fit_size(batch["images"].to(device).float(), model.image_size)
        mask = batch.get("masks")
        if mask is not None:
            mask = fit_size(mask.to(device)[:, None].float(), model.image_size)[:, 0] > 0.5
        return reconstruction_loss(model(batch["codes"].to(device).float()), images, loss, mask)

    return train_adam(model, source, batch_loss, iterations, batch_size, lr, seed, device, checkpoint, checkpoint_every)


# -- image fidelity ---------------------------------------------------------------------------------

def _as_bhwc(x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    return x.detach().to("cpu", torch.float64)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """(size, size) normalised Gaussian, float64."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = SSIM_WINDOW,
             sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """SSIM of Wang et al. 2004 at every window position that fits inside the image.

    x, y: (B, H, W, C) -> (B, H - window + 1, W - window + 1), the mean over channels of
    l * c * s = ((2 mu_x mu_y + C1)(2 sigma_xy + C2)) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2)),
    local statistics under a Gaussian window (11 x 11, sigma 1.5, population (co)variances),
    C1 = (0.01 L)^2, C2 = (0.03 L)^2 for data range L. Windows that would need padding are left out,
    as skimage.metrics.structural_similarity does before averaging.
    """
    x, y = _as_bhwc(x), _as_bhwc(y)
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"x and y must both be (B, H, W, C), got {tuple(x.shape)} and {tuple(y.shape)}")
    channels = x.shape[-1]
    kernel = gaussian_window(window, sigma).expand(channels, 1, window, window)
    x, y = x.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ssim.mean(1)


def image_fidelity(pred, target, mask=None, data_range: float = 1.0) -> dict[str, np.ndarray]:
    """Image fidelity of predicted images against targets over a region.

    pred, target: (B, H, W, 3) linear RGB in [0, 1] (numpy or torch); mask: (B, H, W) bool region
    (e.g. the face pixels of the target), or None for the whole image -> {"l1", "psnr", "ssim"}, each
    (B,) float64:
    - l1: mean absolute difference per channel over the mask pixels;
    - psnr: 10 log10(L^2 / MSE), MSE per channel over the mask pixels (inf where they are equal);
    - ssim: mean of `ssim_map` over the window centres inside the mask (the map covers the pixels
      at least window // 2 from the border; the mask is cropped to match).
    An empty mask gives NaN.
    """
    pred, target = _as_bhwc(pred), _as_bhwc(target)
    if mask is None:
        mask = torch.ones(pred.shape[:3], dtype=torch.bool)
    else:
        mask = torch.as_tensor(np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask, dtype=bool))
    if mask.shape != pred.shape[:3]:
        raise ValueError(f"mask is {tuple(mask.shape)}, images are {tuple(pred.shape)}: expected (B, H, W)")
    weights = mask.to(torch.float64)
    count = weights.sum((1, 2))
    nan = torch.full_like(count, float("nan"))
    abs_err = (pred - target).abs().mean(-1)
    sq_err = ((pred - target) ** 2).mean(-1)
    l1 = torch.where(count > 0, (abs_err * weights).sum((1, 2)) / count.clamp_min(1), nan)
    mse = torch.where(count > 0, (sq_err * weights).sum((1, 2)) / count.clamp_min(1), nan)
    psnr = 10 * torch.log10(data_range ** 2 / mse)
    half = SSIM_WINDOW // 2
    inner = weights[:, half:-half, half:-half]
    inner_count = inner.sum((1, 2))
    ssim = ssim_map(pred, target, data_range)
    ssim = torch.where(inner_count > 0, (ssim * inner).sum((1, 2)) / inner_count.clamp_min(1),
                       torch.full_like(inner_count, float("nan")))
    return {"l1": l1.numpy(), "psnr": psnr.numpy(), "ssim": ssim.numpy()}
