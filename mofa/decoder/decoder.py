"""The analytic, differentiable decoder: code -> per-vertex screen position, colour and visibility."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from mofa.decoder.camera import PinholeCamera, camera_rotation, camera_translation, project
from mofa.decoder.geometry import linear_combination, vertex_normals
from mofa.decoder.layout import CodeLayout
from mofa.decoder.lighting import AMBIENT_OFFSET, light_coefficients, shade


@dataclasses.dataclass
class DecodedFace:
    """Decoder output for a batch of B codes over N vertices.

    screen: (B, N, 2) pixels; colours: (B, N, 3) shaded linear RGB; visible: (B, N) bool front-facing;
    vertices: (B, N, 3) camera space, mm; normals: (B, N, 3) camera space;
    reflectance: (B, N, 3) albedo; shading: (B, N, 3) irradiance; sh_coeffs: (B, 3, 9) with the offset.
    """
    screen: torch.Tensor
    colours: torch.Tensor
    visible: torch.Tensor
    vertices: torch.Tensor
    normals: torch.Tensor
    reflectance: torch.Tensor
    shading: torch.Tensor
    sh_coeffs: torch.Tensor


def front_facing(vertices: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """vertices, normals: (B, N, 3) camera space -> (B, N) bool, normal points towards the camera."""
    return (normals * vertices).sum(-1) < 0


def to_camera(model_vertices: torch.Tensor, model_normals: torch.Tensor, rotation: torch.Tensor,
              translation: torch.Tensor, camera: PinholeCamera) -> tuple[torch.Tensor, torch.Tensor]:
    """Model space -> camera space: vertices (B, N, 3) mm and unit normals (B, N, 3), the code's
    rotation (B, 3) rad and translation (B, 3) -> (vertices (B, N, 3) mm, normals (B, N, 3))."""
    rotation_t = camera_rotation(rotation).transpose(1, 2)
    return (model_vertices @ rotation_t + camera_translation(translation, camera)[:, None],
            model_normals @ rotation_t)


def lit(reflectance: torch.Tensor, normals: torch.Tensor, light: torch.Tensor,
        ambient_offset: float = AMBIENT_OFFSET) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-vertex colour under the code's light: reflectance (B, N, 3), camera-space normals (B, N, 3),
    light (B, 27) -> (colours (B, N, 3) = reflectance * shading, shading (B, N, 3), SH coefficients
    (B, 3, 9) with the ambient offset)."""
    coefficients = light_coefficients(light, ambient_offset)
    shading = shade(normals, coefficients)
    return reflectance * shading, shading, coefficients


class Decoder(torch.nn.Module):
    """Holds one face model's bases as buffers (so `.to(device)` moves them) and decodes codes.

    The model is usually a region sub-mesh (`FaceModel.submesh`) of the mesh the losses use.
    """

    def __init__(self, model, camera: PinholeCamera, ambient_offset: float = AMBIENT_OFFSET,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.layout = CodeLayout.for_model(model)
        self.camera = camera
        self.ambient_offset = ambient_offset
        as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)  # noqa: E731
        self.register_buffer("mean_shape", as_t(model.mean_shape))
        # shape and expression modes in one (Ks + Ke, N, 3) buffer: geometry is one matrix product
        self.register_buffer("geometry_basis", as_t(np.concatenate([model.shape_basis, model.expression_basis], 0)))
        self.register_buffer("mean_reflectance", as_t(model.mean_reflectance))
        self.register_buffer("reflectance_basis", as_t(model.reflectance_basis))
        self.register_buffer("triangles", torch.as_tensor(model.triangles, dtype=torch.int64))
        self.register_buffer("landmarks", torch.as_tensor(model.landmarks, dtype=torch.int64))
        self.register_buffer("face_mask", torch.as_tensor(model.training_mask, dtype=torch.bool))

    @property
    def shape_basis(self) -> torch.Tensor:
        """(Ks, N, 3) identity modes, mm (a view of geometry_basis)."""
        return self.geometry_basis[:self.layout.n_shape]

    @property
    def expression_basis(self) -> torch.Tensor:
        """(Ke, N, 3) expression modes, mm (a view of geometry_basis)."""
        return self.geometry_basis[self.layout.n_shape:]

    @property
    def code_size(self) -> int:
        return self.layout.size

    def geometry(self, shape: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """shape (B, Ks), expression (B, Ke) -> (B, N, 3) model-space vertices, mm."""
        return linear_combination(self.mean_shape, self.geometry_basis, torch.cat([shape, expression], -1))

    def forward(self, code: torch.Tensor) -> DecodedFace:
        """code: (B, layout.size) -> DecodedFace."""
        parts = self.layout.split(code)
        model_vertices = self.geometry(parts.shape, parts.expression)
        model_normals = vertex_normals(model_vertices, self.triangles)
        vertices, normals = to_camera(model_vertices, model_normals, parts.rotation, parts.translation, self.camera)
        reflectance = linear_combination(self.mean_reflectance, self.reflectance_basis, parts.reflectance)
        colours, shading, sh = lit(reflectance, normals, parts.light, self.ambient_offset)
        return DecodedFace(
            screen=project(vertices, self.camera), colours=colours,
            visible=front_facing(vertices, normals), vertices=vertices, normals=normals,
            reflectance=reflectance, shading=shading, sh_coeffs=sh,
        )
