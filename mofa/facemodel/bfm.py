"""Basel Face Model loaders: BFM 2009 (`01_MorphableModel.mat` plus an expression basis) and
BFM 2017/2019 (statismo `.h5`). The files cannot be redistributed; users point the config at theirs.

Facts the loaders rely on, with their sources:
- Units: BFM 2009 coordinates are micrometres, BFM 2017 and 2019 millimetres (B. Egger, Basel,
  github.com/unibas-gravis/basel-face-model-viewer issue #20). Deep3DFaceRecon divides BFM 2009
  shapes and its expression basis by 1e5 "to decimeter" (sicxu/Deep3DFaceRecon_pytorch,
  util/load_mats.py), which agrees: micrometres. Here: BFM 2009 x 1e-3 -> mm, BFM 2017 as stored.
- BFM 2009: shapePC/texPC columns are unit-norm and orthogonal; shapeEV/texEV are standard
  deviations, not variances; texMU is in 0..255; `tl` is 1-based and its triangles are wound
  clockwise seen from outside (patrikhuber/eos, share/scripts/convert-bfm2009-to-eos.py).
  The winding is not assumed here but measured (`outward_triangles`) and flipped when inward.
- BFM 2017/2019 (statismo 0.9 format): model/pcaBasis (3N, K) has orthonormal columns and
  model/pcaVariance holds variances (eos convert-bfm2017-to-eos.py; scalismo StatismoIO.scala).
  Statismo 0.8 files stored pcaBasis = U sqrt(variance) instead (scalismo
  `extractOrthonormalPCABasisMatrix`); the column norms tell the two apart. Colours are in [0, 1].
  A face is mean_shape + mean_expression + bases @ coefficients (scalismo-faces MoMo.scala), so the
  expression model's mean is added to the mean shape. Cells (3, T) are 0-based.
- Both: vectors are interleaved x0 y0 z0 x1 y1 z1 ... (3N entries).
- Colours are used as stored (/255 for 2009), without any sRGB-to-linear conversion, as MoFA did.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import scipy.io

from mofa.errors import MofaError
from mofa.facemodel.model import FaceModel

UM_TO_MM = 1e-3
N_LANDMARKS = 68
LICENCE = "Basel Face Model licence (University of Basel; non-commercial research, not redistributable)"
BFM2009_WHAT = "a Basel Face Model 2009 01_MorphableModel.mat"
BFM2017_WHAT = "a Basel Face Model 2017/2019 .h5"
EXPRESSION_WHAT = "an expression basis .mat/.npz with expPC (3N, K) and expEV (K,)"
# A face's mean shape spans roughly 100-300 mm; far outside means the unit assumption is wrong.
PLAUSIBLE_EXTENT_MM = (30.0, 1000.0)


# -- reading ---------------------------------------------------------------------------------------
def _require_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MofaError(f"{path}: file not found (expected {what})")
    return path


def read_mat(path: str | os.PathLike, keys: list[str], optional: tuple[str, ...] = (),
             what: str = "a MATLAB .mat file") -> dict[str, np.ndarray]:
    """Named variables of a MATLAB file, v5 (scipy) or v7.3 (HDF5), as arrays in MATLAB's
    orientation (h5py shows MATLAB arrays transposed; they are transposed back)."""
    path = _require_file(path, what)
    wanted = list(keys) + list(optional)
    try:
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                found = {k: np.asarray(f[k]).T for k in wanted if k in f and isinstance(f[k], h5py.Dataset)}
        else:
            found = {k: v for k, v in scipy.io.loadmat(path, variable_names=wanted).items() if k in wanted}
    except (OSError, ValueError, NotImplementedError, TypeError) as exc:
        raise MofaError(f"{path}: not a readable MATLAB .mat file ({exc}); expected {what}") from None
    for key in keys:
        if key not in found:
            raise MofaError(f"{path}: missing '{key}' (expected {what})")
    return found


def read_landmarks(path: str | os.PathLike | None, n_vertices: int, model_path: str | os.PathLike) -> np.ndarray:
    """(68,) int64 zero-based vertex indices, Multi-PIE/iBUG order, from a text file (numbers
    separated by blanks, commas or newlines) or a JSON list."""
    if path is None:
        raise MofaError(f"{model_path}: the Basel Face Model has no iBUG 68 landmark indices; set the config key "
                        f"face_model.landmarks_path to a file of {N_LANDMARKS} zero-based vertex indices")
    path = _require_file(path, f"{N_LANDMARKS} zero-based landmark vertex indices (face_model.landmarks_path)")
    text = path.read_text()
    try:
        if text.lstrip().startswith("["):
            values = json.loads(text)
        else:
            values = text.replace(",", " ").split()
        floats = np.asarray(values, dtype=np.float64).ravel()
    except (ValueError, TypeError) as exc:
        raise MofaError(f"{path}: landmark indices are not a list of integers ({exc})") from None
    if floats.shape != (N_LANDMARKS,) or not np.all(floats == np.round(floats)):
        raise MofaError(f"{path}: expected {N_LANDMARKS} integer vertex indices, found {floats.size} values")
    landmarks = floats.astype(np.int64)
    if landmarks.min() < 0 or landmarks.max() >= n_vertices:
        raise MofaError(f"{path}: landmark indices must be zero-based in 0..{n_vertices - 1} "
                        f"(found {landmarks.min()}..{landmarks.max()})")
    return landmarks


# -- geometry --------------------------------------------------------------------------------------
def outward_triangles(vertices: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, bool]:
    """Triangles wound counter-clockwise seen from outside, and whether they were flipped.

    vertices: (N, 3); triangles: (T, 3). Outward means that the area-weighted normals point away
    from the vertex centroid on balance: sum_t n_t . (c_t - c) > 0, i.e. a positive signed volume
    of the cones from the centroid. A face mask is a bowl whose centroid lies behind the surface,
    so this holds for it as for a closed head.
    """
    v = vertices.astype(np.float64)
    a, b, c = (v[triangles[:, k]] for k in range(3))
    normals = np.cross(b - a, c - a)
    signed_volume = np.einsum("ij,ij->", normals, (a + b + c) / 3.0 - v.mean(0))
    if signed_volume < 0:
        return triangles[:, [0, 2, 1]].copy(), True
    return triangles, False


def _check_extent(path: Path, mean_shape_mm: np.ndarray, unit_note: str) -> None:
    extent = float((mean_shape_mm.max(0) - mean_shape_mm.min(0)).max())
    lo, hi = PLAUSIBLE_EXTENT_MM
    if not lo <= extent <= hi:
        raise MofaError(f"{path}: mean shape spans {extent:.3g} mm after conversion, not a face "
                        f"({lo:.0f}-{hi:.0f} mm); {unit_note}")


def _modes(columns: np.ndarray, n: int) -> np.ndarray:
    """(3N, K) interleaved xyz (or rgb) mode columns -> (K, N, 3) float32."""
    return columns.T.reshape(columns.shape[1], n, 3).astype(np.float32)


def _check_modes(path: Path, asked: int, available: int, what: str, key: str) -> None:
    if not 0 <= asked <= available:
        raise MofaError(f"{path}: asked for {asked} {what} modes (face_model.{key}), the model has {available}")


def _vector(path: Path, name: str, array: np.ndarray, size: int, meaning: str) -> np.ndarray:
    """A (size,) float64 vector from an array of any (size,)-equivalent shape, or a MofaError."""
    if array.size != size:
        raise MofaError(f"{path}: '{name}' has {array.size} entries, expected {size} ({meaning})")
    return array.astype(np.float64).ravel()


def _matrix(path: Path, name: str, array: np.ndarray, rows: int, meaning: str) -> np.ndarray:
    if array.ndim != 2 or array.shape[0] != rows:
        raise MofaError(f"{path}: '{name}' has shape {array.shape}, expected ({rows}, K) ({meaning})")
    return array


def _region_masks(path: Path, n: int, face_region_mask: np.ndarray | None) -> dict[str, np.ndarray]:
    full = np.ones(n, dtype=bool)
    if face_region_mask is None:
        return {"face": full}
    mask = np.asarray(face_region_mask)
    if mask.dtype != bool:  # vertex indices
        idx = mask.astype(np.int64).ravel()
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise MofaError(f"{path}: face-region vertex indices outside 0..{n - 1}")
        mask = np.zeros(n, dtype=bool)
        mask[idx] = True
    if mask.shape != (n,) or not mask.any():
        raise MofaError(f"{path}: face-region mask must be a non-empty ({n},) bool mask or vertex indices")
    return {"face": mask, "full": full}


# -- BFM 2009 --------------------------------------------------------------------------------------
def read_expression_basis(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """expPC (3N, K), expEV (K,) standard deviations and optional expMU (3N,) from a .mat or .npz."""
    path = _require_file(path, EXPRESSION_WHAT)
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                found = {k: z[k] for k in ("expPC", "expEV", "expMU") if k in z.files}
        except (OSError, ValueError) as exc:
            raise MofaError(f"{path}: not a readable .npz ({exc}); expected {EXPRESSION_WHAT}") from None
        for key in ("expPC", "expEV"):
            if key not in found:
                raise MofaError(f"{path}: missing '{key}' (expected {EXPRESSION_WHAT})")
        return found
    return read_mat(path, ["expPC", "expEV"], optional=("expMU",), what=EXPRESSION_WHAT)


def load_bfm2009(mat_path: str | os.PathLike, expression_path: str | os.PathLike,
                 landmarks_path: str | os.PathLike | None = None, n_shape: int = 80, n_expression: int = 64,
                 n_reflectance: int = 80, face_region_mask: np.ndarray | None = None) -> FaceModel:
    """Basel Face Model 2009 with an expression basis, in millimetres.

    mat_path: `01_MorphableModel.mat` (v5 or v7.3). expression_path: .mat/.npz with expPC (3N, K)
    unit columns, expEV (K,) standard deviations, optional expMU (3N,) added to the mean; in the
    BFM 2009 unit (micrometres) on the same N vertices, like Deep3DFaceRecon's basis after mapping
    to the BFM vertices. landmarks_path: 68 zero-based vertex indices. face_region_mask: (N,) bool
    or vertex indices of the training region "face" (default: the whole mesh).
    Bases come out scaled by their standard deviations: (K, N, 3), mm or reflectance per unit.
    """
    mat_path = Path(mat_path)
    m = read_mat(mat_path, ["shapeMU", "shapePC", "shapeEV", "texMU", "texPC", "texEV", "tl"], what=BFM2009_WHAT)
    n3 = m["shapeMU"].size
    if n3 % 3 or n3 == 0:
        raise MofaError(f"{mat_path}: 'shapeMU' has {n3} entries, not a multiple of 3 (x y z per vertex)")
    n = n3 // 3
    landmarks = read_landmarks(landmarks_path, n, mat_path)
    shape_mu = _vector(mat_path, "shapeMU", m["shapeMU"], n3, "x y z per vertex")
    shape_pc = _matrix(mat_path, "shapePC", m["shapePC"], n3, f"x y z of {n} vertices per mode")
    shape_sd = _vector(mat_path, "shapeEV", m["shapeEV"], shape_pc.shape[1], "one per shapePC column")
    tex_mu = _vector(mat_path, "texMU", m["texMU"], n3, "r g b per vertex")
    tex_pc = _matrix(mat_path, "texPC", m["texPC"], n3, f"r g b of {n} vertices per mode")
    tex_sd = _vector(mat_path, "texEV", m["texEV"], tex_pc.shape[1], "one per texPC column")
    _check_modes(mat_path, n_shape, shape_pc.shape[1], "shape", "n_shape")
    _check_modes(mat_path, n_reflectance, tex_pc.shape[1], "reflectance", "n_reflectance")

    tl = np.asarray(m["tl"])
    if tl.ndim != 2 or tl.shape[1] != 3:
        raise MofaError(f"{mat_path}: 'tl' has shape {tl.shape}, expected (T, 3) triangles")
    triangles = tl.astype(np.int64) - 1  # MATLAB's 1-based indices
    if triangles.min() < 0 or triangles.max() >= n:
        raise MofaError(f"{mat_path}: 'tl' indices outside 1..{n}; expected a 1-based triangle list")

    expression_path = Path(expression_path)
    e = read_expression_basis(expression_path)
    exp_pc = np.asarray(e["expPC"])
    if exp_pc.ndim != 2 or exp_pc.shape[0] != n3:
        rows = exp_pc.shape[0] if exp_pc.ndim == 2 else exp_pc.size
        raise MofaError(f"{expression_path}: 'expPC' has shape {exp_pc.shape} ({rows // 3} vertices), the shape model "
                        f"{mat_path.name} has {n} vertices; the expression basis must be on the same vertices")
    exp_sd = _vector(expression_path, "expEV", np.asarray(e["expEV"]), exp_pc.shape[1], "one per expPC column")
    _check_modes(expression_path, n_expression, exp_pc.shape[1], "expression", "n_expression")
    neutral_um = shape_mu.copy()
    if "expMU" in e:
        neutral_um += _vector(expression_path, "expMU", np.asarray(e["expMU"]), n3, f"x y z of {n} vertices")

    neutral = neutral_um.reshape(n, 3) * UM_TO_MM
    _check_extent(mat_path, neutral, "BFM 2009 coordinates are expected in micrometres")
    regions = _region_masks(mat_path, n, face_region_mask)
    mean_shape = (neutral - neutral[regions["face"]].mean(0)).astype(np.float32)
    triangles, flipped = outward_triangles(mean_shape, triangles)

    return FaceModel(
        name="bfm2009",
        mean_shape=mean_shape,
        shape_basis=_modes(shape_pc[:, :n_shape] * (shape_sd[:n_shape] * UM_TO_MM), n),
        expression_basis=_modes(exp_pc[:, :n_expression] * (exp_sd[:n_expression] * UM_TO_MM), n),
        mean_reflectance=(tex_mu.reshape(n, 3) / 255.0).astype(np.float32),
        reflectance_basis=_modes(tex_pc[:, :n_reflectance] * (tex_sd[:n_reflectance] / 255.0), n),
        triangles=triangles,
        landmarks=landmarks,
        regions=regions,
        face_region="face",
        licence=LICENCE,
        source=f"Basel Face Model 2009 ({mat_path.name}); expression basis {expression_path.name}",
        reflectance_source="BFM 2009 per-vertex colour PCA (texMU/texPC/texEV, 0..255 -> 0..1)",
        notes=("micrometres -> mm; centred on the face-region centroid"
               + ("; `tl` winding flipped to outward" if flipped else "")),
    )


# -- BFM 2017 / 2019 -------------------------------------------------------------------------------
def _h5_dataset(f: h5py.File, path: Path, key: str) -> h5py.Dataset:
    if key not in f or not isinstance(f[key], h5py.Dataset):
        raise MofaError(f"{path}: missing '{key}' (expected {BFM2017_WHAT})")
    return f[key]


def _statismo_model(f: h5py.File, path: Path, group: str, k: int, n3: int, what: str,
                    key: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean (3N,) and the first k modes (3N, k) scaled by their standard deviations."""
    mean = _vector(path, f"{group}/model/mean", np.asarray(_h5_dataset(f, path, f"{group}/model/mean")), n3,
                   "3 values per vertex of the shape model")
    basis_ds = _h5_dataset(f, path, f"{group}/model/pcaBasis")
    variance = np.asarray(_h5_dataset(f, path, f"{group}/model/pcaVariance"), dtype=np.float64).ravel()
    if basis_ds.ndim != 2 or basis_ds.shape[0] != n3 or basis_ds.shape[1] != variance.size:
        raise MofaError(f"{path}: '{group}/model/pcaBasis' has shape {basis_ds.shape}, expected ({n3}, "
                        f"{variance.size}) to match the shape model and '{group}/model/pcaVariance'")
    _check_modes(path, k, variance.size, what, key)
    basis = np.asarray(basis_ds[:, :k], dtype=np.float64)
    sd = np.sqrt(np.clip(variance[:k], 0.0, None))
    norms = np.linalg.norm(basis, axis=0)
    if np.allclose(norms, 1.0, rtol=0.0, atol=0.02):
        return mean, basis * sd  # statismo >= 0.9: orthonormal columns
    if np.allclose(norms, sd, rtol=0.02, atol=1e-12):
        return mean, basis  # statismo 0.8: columns already U sqrt(variance)
    raise MofaError(f"{path}: '{group}/model/pcaBasis' columns are neither unit-norm nor scaled by the "
                    f"standard deviations (first norms {np.round(norms[:3], 4).tolist()})")


def load_bfm2017(h5_path: str | os.PathLike, landmarks_path: str | os.PathLike | None = None, n_shape: int = 80,
                 n_expression: int = 64, n_reflectance: int = 80) -> FaceModel:
    """Basel Face Model 2017 or 2019 (statismo `.h5`, millimetres), the whole mesh as region "face".

    Mean shape = shape mean + expression mean, centred on its centroid; bases (K, N, 3) scaled by
    the square roots of pcaVariance. landmarks_path: 68 zero-based vertex indices.
    """
    path = _require_file(h5_path, BFM2017_WHAT)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise MofaError(f"{path}: not a readable HDF5 file ({exc}); expected {BFM2017_WHAT}") from None
    with f:
        n3 = _h5_dataset(f, path, "shape/model/mean").size
        if n3 % 3 or n3 == 0:
            raise MofaError(f"{path}: 'shape/model/mean' has {n3} entries, not a multiple of 3 (x y z per vertex)")
        n = n3 // 3
        landmarks = read_landmarks(landmarks_path, n, path)
        cells = np.asarray(_h5_dataset(f, path, "shape/representer/cells"))
        if cells.ndim != 2 or cells.shape[0] != 3:
            raise MofaError(f"{path}: 'shape/representer/cells' has shape {cells.shape}, expected (3, T) triangles")
        triangles = cells.T.astype(np.int64)
        if triangles.size and (triangles.min() < 0 or triangles.max() >= n):
            raise MofaError(f"{path}: 'shape/representer/cells' indices outside 0..{n - 1}")
        shape_mu, shape_basis = _statismo_model(f, path, "shape", n_shape, n3, "shape", "n_shape")
        color_mu, color_basis = _statismo_model(f, path, "color", n_reflectance, n3, "reflectance", "n_reflectance")
        if n_expression == 0 and "expression/model/mean" not in f:
            exp_mu, exp_basis = np.zeros(n3), np.zeros((n3, 0))
        else:
            exp_mu, exp_basis = _statismo_model(f, path, "expression", n_expression, n3, "expression", "n_expression")

    neutral = (shape_mu + exp_mu).reshape(n, 3)
    _check_extent(path, neutral, "BFM 2017/2019 coordinates are expected in millimetres")
    regions = {"face": np.ones(n, dtype=bool)}
    mean_shape = (neutral - neutral.mean(0)).astype(np.float32)
    triangles, flipped = outward_triangles(mean_shape, triangles)

    return FaceModel(
        name="bfm2017",
        mean_shape=mean_shape,
        shape_basis=_modes(shape_basis, n),
        expression_basis=_modes(exp_basis, n),
        mean_reflectance=color_mu.reshape(n, 3).astype(np.float32),
        reflectance_basis=_modes(color_basis, n),
        triangles=triangles,
        landmarks=landmarks,
        regions=regions,
        face_region="face",
        licence=LICENCE,
        source=f"Basel Face Model 2017/2019 ({path.name})",
        reflectance_source="BFM per-vertex colour PCA (color/model, [0, 1])",
        notes=("millimetres as stored; shape mean + expression mean, centred on its centroid"
               + ("; cell winding flipped to outward" if flipped else "")),
    )
