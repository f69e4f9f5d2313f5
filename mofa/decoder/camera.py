"""Pose and camera: Euler-angle rotation, rigid placement, full-perspective pinhole projection.

Conventions (defined here only):
- Model space: x to the face's left (viewer's right in a frontal view), y up, z out of the face (OBJ style).
- Camera space: OpenCV style, x right, y down, z forward; the camera sits at the origin.
- Rotation parameters (pitch, yaw, roll) in radians turn the face about model x, y, z:
  R = Rz(roll) @ Ry(yaw) @ Rx(pitch), applied in model space before the fixed flip into camera space.
- Pixels: u is the column, v the row; the centre of pixel (0, 0) is at (0, 0), so a 240-px crop is
  centred at (119.5, 119.5).
"""
from __future__ import annotations

import dataclasses

import torch

from mofa.config import schema_default

# Model space -> camera space for a frontal face: a half turn about x (y up -> y down, z out -> z in).
MODEL_TO_CAMERA = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])


@dataclasses.dataclass(frozen=True)
class PinholeCamera:
    """A pinhole camera looking at a face at `distance_mm`; principal point at the crop centre.

    focal_length_px: focal length in pixels; image_size: square crop side in pixels;
    translation_scale_mm: millimetres per unit of the code's translation entries.
    """
    image_size: int = schema_default("camera", "image_size")
    focal_length_px: float = float(schema_default("camera", "focal_length_px"))
    distance_mm: float = float(schema_default("camera", "distance_mm"))
    translation_scale_mm: float = float(schema_default("camera", "translation_scale_mm"))

    @property
    def principal_point(self) -> float:
        return (self.image_size - 1) / 2.0

    def intrinsics(self) -> torch.Tensor:
        """(3, 3) K matrix in pixels."""
        c = self.principal_point
        return torch.tensor([[self.focal_length_px, 0.0, c], [0.0, self.focal_length_px, c], [0.0, 0.0, 1.0]])


def euler_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """angles: (B, 3) pitch, yaw, roll in radians -> (B, 3, 3) R = Rz(roll) Ry(yaw) Rx(pitch)."""
    pitch, yaw, roll = angles.unbind(-1)
    one, zero = torch.ones_like(pitch), torch.zeros_like(pitch)
    cx, sx, cy, sy, cz, sz = pitch.cos(), pitch.sin(), yaw.cos(), yaw.sin(), roll.cos(), roll.sin()
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).unflatten(-1, (3, 3))
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).unflatten(-1, (3, 3))
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).unflatten(-1, (3, 3))
    return rz @ ry @ rx


def camera_rotation(angles: torch.Tensor) -> torch.Tensor:
    """angles: (B, 3) -> (B, 3, 3) rotation taking model-space directions into camera space."""
    return MODEL_TO_CAMERA.to(angles) @ euler_to_matrix(angles)


def camera_translation(translation: torch.Tensor, camera: PinholeCamera) -> torch.Tensor:
    """translation code: (B, 3) -> (B, 3) mm; zero puts the face centre on the optical axis at distance_mm."""
    offset = translation.new_tensor([0.0, 0.0, camera.distance_mm])
    return offset + camera.translation_scale_mm * translation


def project(points: torch.Tensor, camera: PinholeCamera) -> torch.Tensor:
    """points: (B, N, 3) camera space, mm, z > 0 -> (B, N, 2) pixels (u column, v row)."""
    z = points[..., 2:3]
    return camera.focal_length_px * points[..., :2] / z + camera.principal_point
