"""The one face-model type every loader produces, and its `.npz` cache format."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from mofa.errors import MofaError, one_line
from mofa.io import save_npz

FORMAT_VERSION = 1


# The regions drawn in images where none is asked for, or the one asked for is missing: the first the
# model has (ICT: face, head, neck, mouth socket and eyeballs; then the full face).
DRAWN_REGIONS = ("face_head", "full_face")

@dataclasses.dataclass(frozen=True)
class FaceModel:
    """A linear 3D morphable face model, in millimetres, with N vertices.

    Every basis is scaled by its standard deviation, so each coefficient has a N(0, 1) prior.

    mean_shape: (N, 3) mm, centred on the training region.
    shape_basis: (Ks, N, 3) mm per unit coefficient (identity).
    expression_basis: (Ke, N, 3) mm per unit coefficient; zero coefficients give the neutral face.
    mean_reflectance: (N, 3) linear RGB in [0, 1].
    reflectance_basis: (Kr, N, 3) per unit coefficient.
    triangles: (T, 3) int64 vertex indices, counter-clockwise seen from outside (outward normals).
    landmarks: (68,) int64 vertex indices in the Multi-PIE/iBUG 68-point order.
    regions: name -> (N,) bool vertex masks; `face_region` names the one used for training.
    expression_examples: (M, Ke) expression coefficients of the model's own blendshapes (realistic
        expressions for synthetic data), or None when the model has none (BFM).
    """

    name: str
    mean_shape: np.ndarray
    shape_basis: np.ndarray
    expression_basis: np.ndarray
    mean_reflectance: np.ndarray
    reflectance_basis: np.ndarray
    triangles: np.ndarray
    landmarks: np.ndarray
    regions: dict[str, np.ndarray]
    face_region: str
    units: str = "mm"
    licence: str = "unknown"
    source: str = ""
    reflectance_source: str = ""
    notes: str = ""
    expression_examples: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.mean_shape.shape[0]
        checks = [
            ("mean_shape", self.mean_shape.shape == (n, 3)),
            ("shape_basis", self.shape_basis.ndim == 3 and self.shape_basis.shape[1:] == (n, 3)),
            ("expression_basis", self.expression_basis.ndim == 3 and self.expression_basis.shape[1:] == (n, 3)),
            ("mean_reflectance", self.mean_reflectance.shape == (n, 3)),
            ("reflectance_basis", self.reflectance_basis.ndim == 3 and self.reflectance_basis.shape[1:] == (n, 3)),
            ("triangles", self.triangles.ndim == 2 and self.triangles.shape[1] == 3),
            ("landmarks", self.landmarks.shape == (68,)),
            ("expression_examples", self.expression_examples is None
             or (self.expression_examples.ndim == 2 and self.expression_examples.shape[1] == self.n_expression)),
        ]
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise MofaError(f"face model '{self.name}': inconsistent arrays {bad} for {n} vertices")
        if self.triangles.size and (self.triangles.min() < 0 or self.triangles.max() >= n):
            raise MofaError(f"face model '{self.name}': triangle indices outside 0..{n - 1}")
        if self.landmarks.min() < 0 or self.landmarks.max() >= n:
            raise MofaError(f"face model '{self.name}': landmark indices outside 0..{n - 1}")
        if self.face_region not in self.regions:
            raise MofaError(f"face model '{self.name}': face_region '{self.face_region}' not among {sorted(self.regions)}")
        for name, mask in self.regions.items():
            if mask.shape != (n,) or mask.dtype != bool:
                raise MofaError(f"face model '{self.name}': region '{name}' is not a ({n},) bool mask")

    # -- sizes -------------------------------------------------------------------------------
    @property
    def n_vertices(self) -> int:
        return int(self.mean_shape.shape[0])

    @property
    def n_shape(self) -> int:
        return int(self.shape_basis.shape[0])

    @property
    def n_expression(self) -> int:
        return int(self.expression_basis.shape[0])

    @property
    def n_reflectance(self) -> int:
        return int(self.reflectance_basis.shape[0])

    @property
    def training_mask(self) -> np.ndarray:
        """(N,) bool: vertices of the face region used by the losses."""
        return self.regions[self.face_region]

    # -- derived models ----------------------------------------------------------------------
    def drawn_region(self, wanted: str | None = None) -> str | None:
        """The region images show (synthetic data, the model card, exported meshes, the renderer
        benchmark): `wanted` where the model has it, else the first of DRAWN_REGIONS it has; None for
        the whole model (a model without regions, as BFM)."""
        for region in ((wanted,) if wanted else ()) + DRAWN_REGIONS:
            if region in self.regions:
                return region
        return None

    def drawn(self, wanted: str | None = None) -> "FaceModel":
        """The model restricted to `drawn_region(wanted)` (itself where that is the whole model)."""
        region = self.drawn_region(wanted)
        return self if region is None else self.submesh(region)

    def submesh(self, region: str) -> "FaceModel":
        """The model restricted to one region: vertices re-indexed, triangles kept when all three
        corners are inside. Landmarks must lie in the region."""
        if region not in self.regions:
            raise MofaError(f"face model '{self.name}': unknown region '{region}' (have {sorted(self.regions)})")
        keep = self.regions[region]
        new_index = np.full(self.n_vertices, -1, dtype=np.int64)
        new_index[keep] = np.arange(int(keep.sum()))
        tri = self.triangles[keep[self.triangles].all(axis=1)]
        lms = new_index[self.landmarks]
        if (lms < 0).any():
            raise MofaError(f"face model '{self.name}': {int((lms < 0).sum())} landmarks lie outside region '{region}'")
        return dataclasses.replace(
            self,
            mean_shape=self.mean_shape[keep],
            shape_basis=self.shape_basis[:, keep],
            expression_basis=self.expression_basis[:, keep],
            mean_reflectance=self.mean_reflectance[keep],
            reflectance_basis=self.reflectance_basis[:, keep],
            triangles=new_index[tri],
            landmarks=lms,
            regions={k: v[keep] for k, v in self.regions.items()},
            face_region=self.face_region if self.face_region in self.regions else region,
        )

    def truncated(self, n_shape: int | None = None, n_expression: int | None = None,
                  n_reflectance: int | None = None) -> "FaceModel":
        """The model with only the first modes of each basis."""
        examples = self.expression_examples
        if examples is not None and n_expression is not None:
            examples = examples[:, :n_expression]

        def cut(basis: np.ndarray, k: int | None, what: str) -> np.ndarray:
            if k is None:
                return basis
            if not 0 <= k <= basis.shape[0]:
                raise MofaError(f"face model '{self.name}': asked for {k} {what} modes, it has {basis.shape[0]}")
            return basis[:k]
        return dataclasses.replace(
            self,
            shape_basis=cut(self.shape_basis, n_shape, "shape"),
            expression_basis=cut(self.expression_basis, n_expression, "expression"),
            reflectance_basis=cut(self.reflectance_basis, n_reflectance, "reflectance"),
            expression_examples=examples,
        )

    # -- model card --------------------------------------------------------------------------
    def card(self) -> str:
        """A human-readable summary: counts, units, licence, provenance."""
        lines = [
            f"face model        {self.name}",
            f"vertices          {self.n_vertices}",
            f"triangles         {len(self.triangles)}",
            f"shape modes       {self.n_shape}",
            f"expression modes  {self.n_expression}",
            f"reflectance modes {self.n_reflectance}",
            f"landmarks         {len(self.landmarks)} (Multi-PIE/iBUG 68 order)",
        ]
        for name, mask in self.regions.items():
            tag = "  <- training region" if name == self.face_region else ""
            lines.append(f"region {name:<12s}{int(mask.sum())} vertices{tag}")
        extent = self.mean_shape.max(0) - self.mean_shape.min(0)
        lines += [
            f"units             {self.units} (mean-shape extent x/y/z: "
            + " / ".join(f"{e:.0f}" for e in extent) + f" {self.units})",
            f"licence           {self.licence}",
            f"source            {self.source}",
            f"reflectance       {self.reflectance_source}",
        ]
        if self.notes:
            lines.append(f"notes             {self.notes}")
        return "\n".join(lines)

    # -- cache -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the model to one `.npz` atomically (temporary file, then rename)."""
        path = Path(path)
        arrays = {
            "format_version": np.array(FORMAT_VERSION),
            "mean_shape": self.mean_shape, "shape_basis": self.shape_basis,
            "expression_basis": self.expression_basis, "mean_reflectance": self.mean_reflectance,
            "reflectance_basis": self.reflectance_basis, "triangles": self.triangles,
            "landmarks": self.landmarks,
            "region_names": np.array(list(self.regions), dtype=str),
            "region_masks": np.stack(list(self.regions.values())),
        }
        if self.expression_examples is not None:
            arrays["expression_examples"] = self.expression_examples
        for key in ("name", "face_region", "units", "licence", "source", "reflectance_source", "notes"):
            arrays[key] = np.array(getattr(self, key), dtype=str)
        save_npz(path, arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FaceModel":
        """Read a model written by `save` (no pickles are executed)."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                if int(z["format_version"]) != FORMAT_VERSION:
                    raise MofaError(f"{path}: face-model cache format {int(z['format_version'])}, expected {FORMAT_VERSION}; delete it to rebuild")
                names = [str(s) for s in z["region_names"]]
                return cls(
                    name=str(z["name"]),
                    mean_shape=z["mean_shape"], shape_basis=z["shape_basis"],
                    expression_basis=z["expression_basis"], mean_reflectance=z["mean_reflectance"],
                    reflectance_basis=z["reflectance_basis"], triangles=z["triangles"],
                    landmarks=z["landmarks"],
                    regions={n: m for n, m in zip(names, z["region_masks"])},
                    face_region=str(z["face_region"]), units=str(z["units"]),
                    licence=str(z["licence"]), source=str(z["source"]),
                    reflectance_source=str(z["reflectance_source"]), notes=str(z["notes"]),
                    expression_examples=z["expression_examples"] if "expression_examples" in z else None,
                )
        except MofaError:
            raise
        except FileNotFoundError:
            raise MofaError(f"{path}: face-model file not found") from None
        except Exception as exc:  # zip, key or dtype trouble: the file is not a model cache
            raise MofaError(f"{path}: not a readable face-model .npz ({one_line(exc)})") from None
