"""Spherical-harmonics illumination of a Lambertian surface: 3 bands, 9 basis functions per channel.

H_b(n) is the real SH basis Y_b(n) times the Lambertian convolution constant of its band
(pi, 2 pi / 3, pi / 4; Ramamoorthi & Hanrahan 2001), so sum_b gamma_b H_b(n) is the irradiance
from a distant light whose radiance has SH coefficients gamma.
"""
from __future__ import annotations

import math

import torch

from mofa.config import schema_default
from mofa.decoder.layout import N_SH_BANDS

LAMBERT_BAND = (math.pi, 2.0 * math.pi / 3.0, math.pi / 4.0)
# Real SH normalisers, index order: Y00; Y1-1 (y), Y10 (z), Y11 (x); Y2-2 (xy), Y2-1 (yz), Y20, Y21 (xz), Y22.
_Y = (
    0.5 / math.sqrt(math.pi),
    math.sqrt(3.0 / (4 * math.pi)),
    0.5 * math.sqrt(15.0 / math.pi),
    0.25 * math.sqrt(5.0 / math.pi),
    0.5 * math.sqrt(15.0 / math.pi),
    0.25 * math.sqrt(15.0 / math.pi),
)
# Added to the band-0 coefficient of every channel, so a zero code is lit (light.ambient_offset's default).
AMBIENT_OFFSET = schema_default("light", "ambient_offset")


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """normals: (..., 3) unit vectors -> (..., 9) Lambertian-convolved real SH basis H_b(n)."""
    x, y, z = normals.unbind(-1)
    a0, a1, a2 = LAMBERT_BAND
    return torch.stack([
        a0 * _Y[0] * torch.ones_like(x),
        a1 * _Y[1] * y, a1 * _Y[1] * z, a1 * _Y[1] * x,
        a2 * _Y[2] * x * y, a2 * _Y[2] * y * z, a2 * _Y[3] * (3 * z * z - 1),
        a2 * _Y[2] * x * z, a2 * _Y[5] * (x * x - y * y),
    ], dim=-1)


def light_coefficients(light: torch.Tensor, ambient_offset: float = AMBIENT_OFFSET) -> torch.Tensor:
    """light code: (B, 27) channel-major -> (B, 3, 9) SH coefficients with the ambient offset added."""
    sh = light.unflatten(-1, (3, N_SH_BANDS))
    offset = torch.zeros(N_SH_BANDS, dtype=light.dtype, device=light.device)
    offset[0] = ambient_offset
    return sh + offset


def shade(normals: torch.Tensor, sh_coeffs: torch.Tensor) -> torch.Tensor:
    """normals: (B, N, 3) unit; sh_coeffs: (B, 3, 9) -> (B, N, 3) irradiance per colour channel."""
    return torch.einsum("bnk,bck->bnc", sh_basis(normals), sh_coeffs)


def solve_light(normals: torch.Tensor, reflectance: torch.Tensor, observed: torch.Tensor, weights: torch.Tensor,
                ridge: float = 1e-3, prior: torch.Tensor | None = None) -> torch.Tensor:
    """The SH coefficients that best light a surface to look like `observed`: per image and channel c,
    argmin_g sum_i w_i (o_ic - r_ic H(n_i) . g_c)^2 + ridge * sum_i w_i * ||g_c - prior_c||^2, the image
    formation being linear in the light (a closed-form least-squares solve, 9 unknowns per channel).

    normals: (B, N, 3) unit; reflectance, observed: (B, N, 3); weights: (B, N) >= 0 (0 leaves a vertex
    out); prior: (B, 3, 9) or None (the ambient-only light, AMBIENT_OFFSET in band 0) -> (B, 3, 9), in
    the convention of `light_coefficients` (offset included). The ridge is relative to the total weight,
    so an image with nothing visible returns the prior.
    """
    basis = sh_basis(normals)
    return _solve(basis, _outer(basis), reflectance, observed, weights, ridge, prior)


def _outer(basis: torch.Tensor) -> torch.Tensor:
    """(B, N, 9) -> (B, N, 81) products H_j H_k, reused by every weighted solve over the same normals."""
    return (basis[..., :, None] * basis[..., None, :]).flatten(-2)


def _solve(basis: torch.Tensor, outer: torch.Tensor, reflectance: torch.Tensor, observed: torch.Tensor,
           weights: torch.Tensor, ridge: float, prior: torch.Tensor | None) -> torch.Tensor:
    w = weights.to(basis.dtype)[..., None]  # (B, N, 1)
    # sum_i w_i r_ic^2 H_i H_i^T and sum_i w_i r_ic o_ic H_i, as (B, 3, N) @ (B, N, 81 or 9) products
    normal_matrix = ((w * reflectance * reflectance).transpose(1, 2) @ outer).unflatten(-1, (N_SH_BANDS, N_SH_BANDS))
    rhs = (w * reflectance * observed).transpose(1, 2) @ basis  # (B, 3, 9)
    if prior is None:
        prior = torch.zeros(basis.shape[0], 3, N_SH_BANDS, dtype=basis.dtype, device=basis.device)
        prior[..., 0] = AMBIENT_OFFSET
    damping = ridge * w[..., 0].sum(-1).clamp_min(1.0)[:, None, None, None]
    eye = torch.eye(N_SH_BANDS, dtype=basis.dtype, device=basis.device)
    return torch.linalg.solve(normal_matrix + damping * eye, rhs + damping[..., 0] * prior)


def robust_light(normals: torch.Tensor, reflectance: torch.Tensor, observed: torch.Tensor, visible: torch.Tensor,
                 iterations: int = 4, ridge: float = 1e-4, floor: float = 0.02) -> torch.Tensor:
    """The light of the robust l2,1 fit, sum_i ||o_i - r_i * shading_i||_2 over visible vertices, by
    iteratively reweighted least squares: `iterations` solves of `solve_light`, each weighting a vertex
    by 1 / max(its last residual norm, floor) (1 iteration = plain least squares). Vertices that the
    lit surface cannot explain (background seen through a wrongly posed face) lose their pull on the light.

    normals: (B, N, 3) unit; reflectance, observed: (B, N, 3); visible: (B, N) bool or 0/1 -> (B, 3, 9)
    with the ambient offset included, as `light_coefficients`.
    """
    if iterations < 1:
        raise ValueError(f"robust_light needs at least 1 iteration, got {iterations}")
    mask = visible.to(normals.dtype)
    weights = mask
    basis = sh_basis(normals)
    outer = _outer(basis)
    for k in range(iterations):
        sh = _solve(basis, outer, reflectance, observed, weights, ridge, None)
        if k + 1 < iterations:
            residual = (observed - reflectance * torch.einsum("bnk,bck->bnc", basis, sh)).norm(dim=-1)
            weights = mask / residual.clamp_min(floor)
    return sh
