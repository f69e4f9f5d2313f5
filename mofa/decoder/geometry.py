"""Geometry of the morphable model: linear shape and reflectance, area-weighted vertex normals."""
from __future__ import annotations

import torch


def linear_combination(mean: torch.Tensor, basis: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """mean: (N, 3); basis: (K, N, 3); coeffs: (B, K) -> (B, N, 3) = mean + sum_k coeffs_k basis_k."""
    return mean + torch.einsum("bk,knc->bnc", coeffs, basis)


def vertex_normals(vertices: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """vertices: (B, N, 3); triangles: (T, 3) int64 counter-clockwise -> (B, N, 3) unit normals.

    Each vertex gets the sum of its adjacent triangles' unnormalised normals (their length is twice
    the triangle's area, so the sum is area-weighted), then normalised.
    """
    a, b, c = (vertices.index_select(1, triangles[:, i]) for i in range(3))
    face_normals = torch.cross(b - a, c - a, dim=-1)  # (B, T, 3)
    normals = torch.zeros_like(vertices)
    for i in range(3):
        normals = normals.index_add(1, triangles[:, i], face_normals)  # out of place: torch.func transforms it
    return torch.nn.functional.normalize(normals, dim=-1, eps=1e-12)
