"""Shared fixtures: a small synthetic face model that keeps the decoder and renderer tests fast."""
from __future__ import annotations

import numpy as np
import pytest

from mofa.facemodel.model import FaceModel


def icosphere(subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit icosphere: (N, 3) float64 vertices on the unit sphere, (T, 3) int64 triangles,
    counter-clockwise seen from outside. 0 -> 12 vertices, 1 -> 42, 2 -> 162, 3 -> 642."""
    t = (1.0 + 5.0 ** 0.5) / 2.0
    vertices = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t),
                (0, -1, -t), (0, 1, -t), (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4),
             (11, 10, 2), (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8),
             (3, 8, 9), (4, 9, 5), (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    verts = [np.asarray(v, dtype=np.float64) / np.linalg.norm(v) for v in vertices]
    for _ in range(subdivisions):
        midpoint: dict[tuple[int, int], int] = {}

        def mid(i: int, j: int) -> int:
            key = (min(i, j), max(i, j))
            if key not in midpoint:
                m = verts[i] + verts[j]
                verts.append(m / np.linalg.norm(m))
                midpoint[key] = len(verts) - 1
            return midpoint[key]

        new_faces = []
        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new_faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new_faces
    return np.stack(verts), np.asarray(faces, dtype=np.int64)


def smooth_orthogonal_modes(unit_points: np.ndarray, n_modes: int, rms: float,
                            rng: np.random.Generator) -> np.ndarray:
    """(n_modes, N, 3) smooth fields (random quadratics of position), orthogonal as flat vectors,
    each with per-entry root-mean-square `rms`."""
    x, y, z = unit_points.T
    features = np.stack([x, y, z, x * x, y * y, z * z, x * y, y * z, x * z], 1)  # (N, 9)
    fields = np.einsum("nf,kfc->knc", features, rng.standard_normal((n_modes, 9, 3)))
    q, _ = np.linalg.qr(fields.reshape(n_modes, -1).T)  # (3N, n_modes) orthonormal columns
    return (q.T * rms * np.sqrt(q.shape[0])).reshape(n_modes, -1, 3)


def make_small_face_model(subdivisions: int = 3, radius_mm: float = 75.0, seed: int = 0) -> FaceModel:
    """A sphere-like synthetic face model: 642 vertices (subdivisions=3), 150 mm across, centred at
    the origin, outward counter-clockwise triangles, 4 shape / 3 expression / 4 reflectance modes."""
    rng = np.random.default_rng(seed)
    unit, triangles = icosphere(subdivisions)
    n = len(unit)
    mean_shape = radius_mm * unit
    # Landmarks: 68 distinct vertices spread over the front (+z, out of the face) hemisphere.
    front = np.argsort(-unit[:, 2])[: n // 3]
    landmarks = np.sort(front[np.linspace(0, len(front) - 1, 68).round().astype(np.int64)])
    mean_reflectance = np.clip(0.6 + 0.08 * unit[:, [1, 0, 2]] * np.array([1.0, -1.0, 0.5]), 0.0, 1.0)
    return FaceModel(
        name="small-sphere",
        mean_shape=mean_shape.astype(np.float32),
        shape_basis=smooth_orthogonal_modes(unit, 4, 3.0, rng).astype(np.float32),
        expression_basis=smooth_orthogonal_modes(unit, 3, 2.0, rng).astype(np.float32),
        mean_reflectance=mean_reflectance.astype(np.float32),
        reflectance_basis=smooth_orthogonal_modes(unit, 4, 0.05, rng).astype(np.float32),
        triangles=triangles,
        landmarks=landmarks,
        regions={"face": np.ones(n, dtype=bool)},
        face_region="face",
        licence="test fixture",
        source="tests/conftest.py icosphere",
        reflectance_source="synthetic",
    )


@pytest.fixture(scope="session")
def small_face_model() -> FaceModel:
    """642-vertex icosphere face model, 150 mm across, centred at the origin (see make_small_face_model)."""
    return make_small_face_model()


# -- the real ICT-FaceKit copy ------------------------------------------------------------------

def shared_data_dir(var: str, probe: str):
    """The folder an environment variable names, holding at least one `probe` file (a glob); a test
    that needs it fails with a clear message (never skips) without it. .ci/run sets them."""
    import os
    from pathlib import Path
    value = os.environ.get(var)
    if not value:
        pytest.fail(f"{var} is not set: point it at the real-faces copy (here: ../shared/real-faces/), see .ci/run")
    path = Path(value)
    if not any(path.glob(probe)):
        pytest.fail(f"{var}={value} holds no {probe}")
    return path


@pytest.fixture(scope="session")
def aflw_dir():
    """MOFA_AFLW2000_DIR: AFLW2000-3D images (jpg + mat)."""
    return shared_data_dir("MOFA_AFLW2000_DIR", "image*.mat")


@pytest.fixture(scope="session")
def ibug_dir():
    """MOFA_IBUG68_DIR: 300-W style photos with .pts landmarks."""
    return shared_data_dir("MOFA_IBUG68_DIR", "*.pts")


@pytest.fixture(scope="session")
def ict_dir():
    """The ICT-FaceKit folder named by MOFA_ICT_DIR; a test that needs it fails (never skips) without it."""
    import os
    from pathlib import Path
    value = os.environ.get("MOFA_ICT_DIR")
    if not value:
        pytest.fail("MOFA_ICT_DIR is not set: point it at a copy of ICT-FaceKit (here: ../shared/ict-facekit)")
    path = Path(value)
    if not (path / "FaceXModel" / "generic_neutral_mesh.obj").is_file():
        pytest.fail(f"MOFA_ICT_DIR={value} holds no FaceXModel/generic_neutral_mesh.obj")
    return path


@pytest.fixture(scope="session")
def ict_model(ict_dir):
    """The full ICT model (26,719 vertices; 80 shape, 53 expression, 80 reflectance modes)."""
    from mofa.facemodel.ict import load_ict
    return load_ict(ict_dir)


@pytest.fixture(scope="session")
def default_camera():
    """The camera of the `default` preset."""
    from mofa.settings import load_settings
    return load_settings("default").camera


@pytest.fixture(scope="module")
def cache(ict_dir, tmp_path_factory):
    """A face-model cache holding the ci preset's model (built once per test module)."""
    from mofa.facemodel import build_face_model
    from mofa.settings import load_settings
    folder = tmp_path_factory.mktemp("cache")
    build_face_model(load_settings("ci", {"face_model.cache_dir": str(folder)}).face_model)
    return folder


@pytest.fixture(scope="module")
def checkpoint(cache, tmp_path_factory):
    """Weights of a fresh AlexNet encoder for the ci face model, with its encoder.json."""
    import torch

    from mofa.facemodel import build_face_model
    from mofa.settings import load_settings
    from mofa.training.runs import make_encoder, training_decoder, write_encoder_card
    root = tmp_path_factory.mktemp("run")
    settings = load_settings("ci", {"face_model.cache_dir": str(cache)})
    decoder = training_decoder(settings, build_face_model(settings.face_model))
    encoder = make_encoder(settings, "alexnet", decoder)
    torch.save(encoder.state_dict(), root / "encoder.pt")
    write_encoder_card(root, settings, "alexnet", decoder, encoder)
    return root / "encoder.pt"


@pytest.fixture
def restore_logging():
    """A stage's logging setup replaces the root handlers; put pytest's back afterwards."""
    import logging
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
