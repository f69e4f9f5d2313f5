"""Spherical-harmonics illumination of a Lambertian surface: 3 bands, 9 basis functions per channel.

H_b(n) is the real SH basis Y_b(n) times the Lambertian convolution constant of its band
(pi, 2 pi / 3, pi / 4; Ramamoorthi & Hanrahan 2001), so sum_b gamma_b H_b(n) is the irradiance
from a distant light whose radiance has SH coefficients gamma.
"""
from __future__ import annotations

import math

import torch

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
AMBIENT_OFFSET = 0.7  # added to the band-0 coefficient of every channel, so a zero code is lit


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
    basis = sh_basis(normals)  # (B, N, 9)
    design = reflectance[..., :, None] * basis[..., None, :]  # (B, N, 3, 9)
    w = weights.to(design.dtype)[..., None, None]
    normal_matrix = torch.einsum("bncj,bnck->bcjk", design * w, design)  # (B, 3, 9, 9)
    rhs = torch.einsum("bncj,bnc->bcj", design * w, observed)
    if prior is None:
        prior = torch.zeros(normals.shape[0], 3, N_SH_BANDS, dtype=design.dtype, device=design.device)
        prior[..., 0] = AMBIENT_OFFSET
    damping = ridge * weights.to(design.dtype).sum(-1).clamp_min(1.0)[:, None, None, None]
    eye = torch.eye(N_SH_BANDS, dtype=design.dtype, device=design.device)
    return torch.linalg.solve(normal_matrix + damping * eye, rhs + damping[..., 0] * prior)
