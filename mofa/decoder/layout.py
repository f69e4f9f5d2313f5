"""The code vector's layout, derived from the face model: named slices, never a hard-coded size."""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch

N_ROTATION = 3
ANGLES = ("pitch", "yaw", "roll")  # the rotation entries, in code order (radians)
N_TRANSLATION = 3
POSE_ENTRIES = (*ANGLES, "tx", "ty", "tz")  # single pose entries by name: the angles, then translation x, y, z
N_SH_BANDS = 9
N_LIGHT = 3 * N_SH_BANDS


class Code(NamedTuple):
    """A code split into its parts; every field is (B, k)."""
    shape: torch.Tensor
    expression: torch.Tensor
    reflectance: torch.Tensor
    rotation: torch.Tensor  # (B, 3) pitch, yaw, roll in radians
    translation: torch.Tensor  # (B, 3) in units of the camera's translation_scale_mm
    light: torch.Tensor  # (B, 27) SH coefficients, channel-major (R 0..8, G 0..8, B 0..8)


@dataclasses.dataclass(frozen=True)
class CodeLayout:
    """Sizes of each part of x = (alpha, delta, beta, rotation, translation, gamma)."""
    n_shape: int
    n_expression: int
    n_reflectance: int

    @classmethod
    def for_model(cls, model) -> "CodeLayout":
        return cls(model.n_shape, model.n_expression, model.n_reflectance)

    @property
    def sizes(self) -> dict[str, int]:
        return {"shape": self.n_shape, "expression": self.n_expression,
                "reflectance": self.n_reflectance, "rotation": N_ROTATION,
                "translation": N_TRANSLATION, "light": N_LIGHT}

    @property
    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for name, size in self.sizes.items():
            out[name] = slice(start, start + size)
            start += size
        return out

    @property
    def size(self) -> int:
        return sum(self.sizes.values())

    def index(self, entry: str) -> int:
        """Column of a single pose entry (POSE_ENTRIES: pitch, yaw, roll, tx, ty, tz) in the code."""
        if entry not in POSE_ENTRIES:
            raise ValueError(f"unknown pose entry {entry!r}: choose one of {', '.join(POSE_ENTRIES)}")
        if entry in ANGLES:
            return self.slices["rotation"].start + ANGLES.index(entry)
        return self.slices["translation"].start + "xyz".index(entry[1])

    def mask(self, *parts: str, device: torch.device | str | None = None) -> torch.Tensor:
        """(size,) bool, True on the entries of the named parts (code parts such as "light", or single
        pose entries such as "yaw" or "tx")."""
        out = torch.zeros(self.size, dtype=torch.bool, device=device)
        for name in parts:
            if name in self.slices:
                out[self.slices[name]] = True
            elif name in POSE_ENTRIES:
                out[self.index(name)] = True
            else:
                raise ValueError(f"unknown code part {name!r}: choose from {', '.join([*self.slices, *POSE_ENTRIES])}")
        return out

    def split(self, code: torch.Tensor) -> Code:
        """code: (B, size) -> Code of (B, k) views."""
        if code.shape[-1] != self.size:
            raise ValueError(f"code has {code.shape[-1]} entries, the face model's layout needs {self.size} "
                             f"({', '.join(f'{k} {v}' for k, v in self.sizes.items())})")
        return Code(*(code[..., s] for s in self.slices.values()))

    def join(self, **parts: torch.Tensor) -> torch.Tensor:
        """Build a (B, size) code from named parts; missing parts are zero."""
        ref = next(iter(parts.values()))
        batch = ref.shape[0]
        code = ref.new_zeros(batch, self.size)
        for name, value in parts.items():
            code[:, self.slices[name]] = value
        return code
