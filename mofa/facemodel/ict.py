"""ICT-FaceKit (ICT Face Model Light, MIT licence) from a folder with the public repository's layout.

Topology comes from `FaceXModel/generic_neutral_mesh.obj`; every other OBJ is read for its `v` lines
only (the shared copy strips the repeated topology lines; a fresh clone has them, and both read the same).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from mofa.errors import MofaError
from mofa.facemodel.model import FaceModel
from mofa.facemodel.reflectance import analytic_reflectance_prior

CM_TO_MM = 10.0
N_IDENTITY = 100
LICENCE = "MIT (c) 2020 USC Institute for Creative Technologies (ICT-FaceKit LICENSE)"
SOURCE = "ICT-FaceKit, ICT Face Model Light (github.com/ICT-VGL/ICT-FaceKit), light-stage scans"

# Vertex ranges from the ICT-FaceKit README's topology tables (inclusive ends).
FACE = (0, 9408)
NARROW_FACE = (0, 6705)
HEAD_NECK = (9409, 11247)
MOUTH_SOCKET = (11248, 13293)
EYE_SOCKETS = (13294, 14061)
GUMS_TONGUE = (14062, 17038)
TEETH = (17039, 21450)
EYEBALLS = (21451, 24590)
IRISES = ((22221, 23020), (23791, 24590))
EYELASHES = (25351, 26718)

# Multi-PIE 68 landmark vertex indices, copied from the README's "Facial Landmarks" section.
README_LANDMARKS = (
    1225, 1888, 1052, 367, 1719, 1722, 2199, 1447, 966, 3661, 4390, 3927, 3924, 2608, 3272, 4088, 3443,
    268, 493, 1914, 2044, 1401, 3615, 4240, 4114, 2734, 2509, 978, 4527, 4942, 4857, 1140, 2075, 1147,
    4269, 3360, 1507, 1542, 1537, 1528, 1518, 1511, 3742, 3751, 3756, 3721, 3725, 3732, 5708, 5695, 2081,
    0, 4275, 6200, 6213, 6346, 6461, 5518, 5957, 5841, 5702, 5711, 5533, 6216, 6207, 6470, 5517, 5966,
)


def _mask(n: int, *ranges: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    for lo, hi in ranges:
        mask[lo:hi + 1] = True
    return mask


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise MofaError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise MofaError(f"{path}: not a text OBJ mesh (binary content)") from None


def read_obj_vertices(path: Path) -> np.ndarray:
    """(N, 3) float64 positions from the `v` lines of an OBJ file."""
    text = _read_text(path)
    values = re.findall(r"^v[ \t]+(\S+)[ \t]+(\S+)[ \t]+(\S+)", text, flags=re.MULTILINE)
    if not values:
        raise MofaError(f"{path}: no vertex ('v x y z') lines; not an OBJ mesh")
    try:
        return np.asarray(values, dtype=np.float64)
    except ValueError as exc:
        raise MofaError(f"{path}: a vertex line holds a non-number ({exc}); not an OBJ mesh") from None


def read_obj_triangles(path: Path) -> np.ndarray:
    """(T, 3) int64 zero-based triangles from the `f` lines; polygons are fanned (quad -> 2 triangles)."""
    tris = []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if line.startswith("f "):
            try:
                idx = [int(tok.split("/")[0]) - 1 for tok in line.split()[1:]]
            except ValueError:
                raise MofaError(f"{path}: line {number}: a face index is not a number ({line[:40]!r})") from None
            tris.extend((idx[0], idx[k], idx[k + 1]) for k in range(1, len(idx) - 1))
    if not tris:
        raise MofaError(f"{path}: no face ('f ...') lines; the neutral mesh must carry the topology")
    return np.asarray(tris, dtype=np.int64)


def expression_pca(offsets: np.ndarray, n_modes: int) -> tuple[np.ndarray, np.ndarray]:
    """offsets: (M, N, 3) blendshape targets minus neutral -> expression basis (n_modes, N, 3) and
    each blendshape's coefficients in it (M, n_modes).

    Uncentred PCA (SVD of the offsets), so zero coefficients give the neutral face. Mode k is the k-th
    right singular vector times sigma_k = s_k / sqrt(M), the RMS of the blendshapes' projections on
    it: a single fully active blendshape has coefficients of order one, matching the N(0, 1) prior.
    Signs are fixed so that each mode's largest-magnitude entry is positive (deterministic).
    """
    m = offsets.shape[0]
    if n_modes > m:
        raise MofaError(f"asked for {n_modes} expression modes; {m} blendshapes give at most {m}")
    u, s, vt = np.linalg.svd(offsets.reshape(m, -1), full_matrices=False)
    modes = vt[:n_modes] * (s[:n_modes, None] / np.sqrt(m))
    sign = np.sign(modes[np.arange(n_modes), np.abs(modes).argmax(1)])
    # offsets = U S Vt, so blendshape j = sum_k U_jk sqrt(M) * mode_k
    examples = u[:, :n_modes] * np.sqrt(m) * sign
    return (modes * sign[:, None]).reshape(n_modes, -1, 3), examples


def load_ict(folder: str | Path, n_shape: int = 80, n_expression: int = 53, n_reflectance: int = 80,
             face_region: str = "narrow_face") -> FaceModel:
    """Build the ICT face model in millimetres from a folder with the repository's layout.

    Regions: 'narrow_face' (README's narrow face area, 6,706 vertices), 'full_face' (9,409),
    'face_head' (face, head and neck, mouth socket and eyeballs: what the renderer draws).
    """
    root = Path(folder)
    mdir = root / "FaceXModel"
    neutral_path = mdir / "generic_neutral_mesh.obj"
    if not neutral_path.is_file():
        raise MofaError(f"{root}: not an ICT-FaceKit folder (missing FaceXModel/generic_neutral_mesh.obj)")
    if not 0 <= n_shape <= N_IDENTITY:
        raise MofaError(f"face_model.n_shape: {n_shape} asked; ICT-FaceKit has {N_IDENTITY} identity modes")
    try:
        index_info = json.loads((mdir / "vertex_indices.json").read_text())
        expression_names = list(index_info["expressions"])
    except (OSError, ValueError, KeyError) as exc:
        raise MofaError(f"{mdir / 'vertex_indices.json'}: unreadable or without 'expressions' ({exc})") from None

    neutral = read_obj_vertices(neutral_path) * CM_TO_MM
    n = len(neutral)
    triangles = read_obj_triangles(neutral_path)

    def offsets(names: list[str]) -> np.ndarray:
        out = np.empty((len(names), n, 3))
        for k, name in enumerate(names):
            target = read_obj_vertices(mdir / f"{name}.obj") * CM_TO_MM
            if target.shape != neutral.shape:
                raise MofaError(f"{mdir / (name + '.obj')}: {len(target)} vertices, the neutral mesh has {n}")
            out[k] = target - neutral
        return out

    # identityNNN - neutral is a PCA mode already scaled by its standard deviation (PROVENANCE.md).
    shape_basis = offsets([f"identity{k:03d}" for k in range(n_shape)])
    if n_expression:
        expression_basis, expression_examples = expression_pca(offsets(expression_names), n_expression)
    else:
        expression_basis, expression_examples = np.zeros((0, n, 3)), np.zeros((len(expression_names), 0))

    landmarks = np.asarray(README_LANDMARKS, dtype=np.int64)
    regions = {
        "narrow_face": _mask(n, NARROW_FACE),
        "full_face": _mask(n, FACE),
        "face_head": _mask(n, FACE, HEAD_NECK, MOUTH_SOCKET, EYEBALLS),
    }
    if face_region not in regions:
        raise MofaError(f"face_model.face_region: '{face_region}' is not an ICT region (have {sorted(regions)})")
    mean_shape = neutral - neutral[regions[face_region]].mean(0)

    parts = {
        "skin": _mask(n, FACE, HEAD_NECK),
        "mouth_interior": _mask(n, MOUTH_SOCKET, GUMS_TONGUE, EYE_SOCKETS),
        "teeth": _mask(n, TEETH),
        "sclera": _mask(n, EYEBALLS) & ~_mask(n, *IRISES),
        "iris": _mask(n, *IRISES),
        "lashes": _mask(n, EYELASHES),
    }
    mean_reflectance, reflectance_basis = analytic_reflectance_prior(
        mean_shape, landmarks, parts, n_reflectance, skin_region=regions["face_head"])

    return FaceModel(
        name="ict",
        mean_shape=mean_shape.astype(np.float32),
        shape_basis=shape_basis.astype(np.float32),
        expression_basis=expression_basis.astype(np.float32),
        mean_reflectance=mean_reflectance.astype(np.float32),
        reflectance_basis=reflectance_basis.astype(np.float32),
        triangles=triangles,
        landmarks=landmarks,
        regions=regions,
        face_region=face_region,
        units="mm",
        licence=LICENCE,
        source=f"{SOURCE}; read from {root}",
        reflectance_source="analytic prior (mofa.facemodel.reflectance), NOT scan-derived: ICT-FaceKit has no albedo model",
        expression_examples=expression_examples.astype(np.float32),
        notes=f"expression basis: uncentred PCA of {len(expression_names)} ARKit-style blendshapes, scaled by std. dev.",
    )
