"""Basel Face Model loaders, on tiny files written here in the real formats: a 324-vertex dome
(a face-like open surface bulging towards +z) with known orthonormal bases."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from mofa.errors import MofaError
from mofa.facemodel.bfm import load_bfm2009, load_bfm2017, outward_triangles

GRID = 18  # GRID x GRID vertices
N = GRID * GRID
LANDMARKS = np.arange(0, 3 * 68, 3)  # 68 distinct vertices


def dome_mm() -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) mm points of a spherical cap 140 mm across bulging towards +z, and (T, 3) 0-based
    triangles counter-clockwise seen from +z (outside)."""
    x, y = np.meshgrid(np.linspace(-70, 70, GRID), np.linspace(-70, 70, GRID))
    z = np.sqrt(120.0 ** 2 - x ** 2 - y ** 2)
    points = np.stack([x.ravel(), y.ravel(), z.ravel()], 1)
    tris = []
    for i in range(GRID - 1):
        for j in range(GRID - 1):
            v00, v01, v10, v11 = i * GRID + j, i * GRID + j + 1, (i + 1) * GRID + j, (i + 1) * GRID + j + 1
            tris += [(v00, v01, v10), (v01, v11, v10)]  # +x then +y: normal +z
    return points, np.asarray(tris, dtype=np.int64)


def orthonormal(rows: int, cols: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((rows, cols)))
    return q.astype(np.float32)


def bfm2009_arrays() -> dict[str, np.ndarray]:
    """MATLAB-shaped BFM 2009 variables: micrometres, 0..255 colours, 1-based clockwise `tl`."""
    points, tris = dome_mm()
    rng = np.random.default_rng(1)
    return {
        "shapeMU": (points * 1000.0).reshape(-1, 1).astype(np.float32),
        "shapePC": orthonormal(3 * N, 5, 2),
        "shapeEV": np.array([[9000.0], [6000.0], [4000.0], [2500.0], [1000.0]], dtype=np.float32),
        "texMU": rng.uniform(60, 220, (3 * N, 1)).astype(np.float32),
        "texPC": orthonormal(3 * N, 4, 3),
        "texEV": np.array([[900.0], [500.0], [300.0], [100.0]], dtype=np.float32),
        "tl": (tris[:, [0, 2, 1]] + 1).astype(np.float64),  # clockwise from outside, like the real file
    }


def expression_arrays(n_vertices: int = N) -> dict[str, np.ndarray]:
    return {
        "expPC": orthonormal(3 * n_vertices, 6, 4),
        "expEV": np.array([5000.0, 4000.0, 3000.0, 2000.0, 1000.0, 500.0], dtype=np.float32),
        "expMU": np.full(3 * n_vertices, 100.0, dtype=np.float32),  # +0.1 mm everywhere
    }


def write_mat73(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """An HDF5 file laid out like MATLAB -v7.3: 512-byte user block, arrays stored transposed."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=np.asarray(value).T)
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, written by tests/test_bfm.py")
    return path


@pytest.fixture()
def bfm2009_files(tmp_path: Path) -> dict[str, Path]:
    mat = tmp_path / "01_MorphableModel.mat"
    scipy.io.savemat(mat, bfm2009_arrays())
    exp = tmp_path / "exp_basis.npz"
    np.savez(exp, **expression_arrays())
    lms = tmp_path / "landmarks.txt"
    lms.write_text(",\n".join(" ".join(str(i) for i in row) for row in LANDMARKS.reshape(4, 17)))
    return {"mat": mat, "exp": exp, "lms": lms}


def test_bfm2009_units_scaling_and_winding(bfm2009_files):
    a, e = bfm2009_arrays(), expression_arrays()
    model = load_bfm2009(bfm2009_files["mat"], bfm2009_files["exp"], bfm2009_files["lms"],
                         n_shape=3, n_expression=4, n_reflectance=2)
    assert (model.n_vertices, model.n_shape, model.n_expression, model.n_reflectance) == (N, 3, 4, 2)
    assert model.units == "mm"
    # Micrometres -> mm: the dome is 140 mm across; expMU (0.1 mm) is added before centring.
    points, tris = dome_mm()
    neutral = points + 0.1
    np.testing.assert_allclose(model.mean_shape, neutral - neutral.mean(0), atol=1e-3)
    np.testing.assert_allclose(model.mean_shape.mean(0), 0.0, atol=1e-4)
    # Each mode is its unit column times its standard deviation (mm): norm == EV / 1000.
    np.testing.assert_allclose(np.linalg.norm(model.shape_basis.reshape(3, -1), axis=1),
                               a["shapeEV"][:3, 0] / 1000.0, rtol=1e-5)
    np.testing.assert_allclose(model.shape_basis[1].ravel(), a["shapePC"][:, 1] * 6.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(model.expression_basis.reshape(4, -1), axis=1),
                               e["expEV"][:4] / 1000.0, rtol=1e-5)
    np.testing.assert_allclose(model.mean_reflectance.ravel(), a["texMU"][:, 0] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(model.reflectance_basis.reshape(2, -1), axis=1),
                               a["texEV"][:2, 0] / 255.0, rtol=1e-5)
    # 1-based clockwise `tl` -> 0-based counter-clockwise from outside (+z here).
    np.testing.assert_array_equal(model.triangles, tris)
    v = model.mean_shape[model.triangles]
    normals = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    assert (normals[:, 2] > 0).all()
    assert "flipped" in model.notes
    np.testing.assert_array_equal(model.landmarks, LANDMARKS)
    assert model.regions.keys() == {"face"} and model.face_region == "face"


def test_bfm2009_mat73_reads_like_v5(tmp_path, bfm2009_files):
    mat73 = write_mat73(tmp_path / "v73.mat", bfm2009_arrays())
    v5 = load_bfm2009(bfm2009_files["mat"], bfm2009_files["exp"], bfm2009_files["lms"], 5, 6, 4)
    v73 = load_bfm2009(mat73, bfm2009_files["exp"], bfm2009_files["lms"], 5, 6, 4)
    for name in ("mean_shape", "shape_basis", "expression_basis", "mean_reflectance", "reflectance_basis",
                 "triangles", "landmarks"):
        np.testing.assert_array_equal(getattr(v5, name), getattr(v73, name), err_msg=name)


def test_bfm2009_outward_winding_kept_and_region_centring(tmp_path, bfm2009_files):
    arrays = bfm2009_arrays()
    arrays["tl"] = arrays["tl"][:, [0, 2, 1]]  # already counter-clockwise from outside
    mat = tmp_path / "ccw.mat"
    scipy.io.savemat(mat, arrays)
    exp = tmp_path / "exp.mat"
    scipy.io.savemat(exp, {k: v for k, v in expression_arrays().items() if k != "expMU"})
    lms = tmp_path / "lms.json"
    lms.write_text(json.dumps(LANDMARKS.tolist()))
    region = np.zeros(N, dtype=bool)
    region[: N // 2] = True  # the y < 0 half
    model = load_bfm2009(mat, exp, lms, 2, 2, 2, face_region_mask=region)
    _, tris = dome_mm()
    np.testing.assert_array_equal(model.triangles, tris)
    assert "flipped" not in model.notes
    assert set(model.regions) == {"face", "full"} and model.training_mask.sum() == N // 2
    np.testing.assert_allclose(model.mean_shape[region].mean(0), 0.0, atol=1e-3)
    assert model.mean_shape[~region, 1].min() > 0  # the other half now lies at y > 0


def test_bfm2009_errors(tmp_path, bfm2009_files):
    arrays = bfm2009_arrays()
    del arrays["shapeEV"]
    no_ev = tmp_path / "no_ev.mat"
    scipy.io.savemat(no_ev, arrays)
    with pytest.raises(MofaError, match=r"no_ev\.mat: missing 'shapeEV' \(expected a Basel Face Model 2009"):
        load_bfm2009(no_ev, bfm2009_files["exp"], bfm2009_files["lms"])

    other = tmp_path / "other_vertices.npz"
    np.savez(other, **expression_arrays(N - 10))
    with pytest.raises(MofaError, match=rf"other_vertices\.npz: .*{N - 10} vertices.*{N} vertices"):
        load_bfm2009(bfm2009_files["mat"], other, bfm2009_files["lms"], 2, 2, 2)

    with pytest.raises(MofaError, match=r"asked for 80 shape modes \(face_model.n_shape\), the model has 5"):
        load_bfm2009(bfm2009_files["mat"], bfm2009_files["exp"], bfm2009_files["lms"])
    with pytest.raises(MofaError, match=r"asked for 7 expression modes"):
        load_bfm2009(bfm2009_files["mat"], bfm2009_files["exp"], bfm2009_files["lms"], 2, 7, 2)

    with pytest.raises(MofaError, match=r"face_model\.landmarks_path"):
        load_bfm2009(bfm2009_files["mat"], bfm2009_files["exp"], None, 2, 2, 2)
    short = tmp_path / "short.txt"
    short.write_text(" ".join(map(str, LANDMARKS[:67])))
    with pytest.raises(MofaError, match=r"short\.txt: expected 68 integer vertex indices, found 67"):
        load_bfm2009(bfm2009_files["mat"], bfm2009_files["exp"], short, 2, 2, 2)

    with pytest.raises(MofaError, match=r"nowhere\.mat: file not found"):
        load_bfm2009(tmp_path / "nowhere.mat", bfm2009_files["exp"], bfm2009_files["lms"])


# -- BFM 2017 --------------------------------------------------------------------------------------
SHAPE_VAR = np.array([64.0, 25.0, 9.0, 4.0], dtype=np.float32)  # mm^2
EXP_VAR = np.array([16.0, 9.0, 1.0], dtype=np.float32)
COLOR_VAR = np.array([0.01, 0.0025, 0.0004], dtype=np.float32)


def write_bfm2017(path: Path, *, scaled_basis: bool = False, drop: str | None = None,
                  expression_vertices: int = N) -> Path:
    """A statismo-layout file: {shape,color,expression}/model/{mean,pcaBasis,pcaVariance},
    shape/representer/{points (3, N), cells (3, T) clockwise from outside}. scaled_basis writes the
    statismo 0.8 layout (pcaBasis = U sqrt(variance))."""
    points, tris = dome_mm()
    rng = np.random.default_rng(5)
    models = {
        "shape": (points.ravel(), orthonormal(3 * N, 4, 6), SHAPE_VAR),
        "color": (rng.uniform(0.2, 0.8, 3 * N), orthonormal(3 * N, 3, 7), COLOR_VAR),
        "expression": (np.full(3 * expression_vertices, 0.5), orthonormal(3 * expression_vertices, 3, 8), EXP_VAR),
    }
    with h5py.File(path, "w") as f:
        f["version/majorVersion"] = 0
        f["version/minorVersion"] = 8 if scaled_basis else 9
        for group, (mean, basis, variance) in models.items():
            if scaled_basis:
                basis = basis * np.sqrt(variance)
            f[f"{group}/model/mean"] = mean.astype(np.float32)
            f[f"{group}/model/pcaBasis"] = basis.astype(np.float32)
            f[f"{group}/model/pcaVariance"] = variance
            f[f"{group}/representer/points"] = points.T.astype(np.float32)
            f[f"{group}/representer/cells"] = tris[:, [0, 2, 1]].T.astype(np.uint32)
        if drop:
            del f[drop]
    return path


@pytest.fixture()
def landmarks_file(tmp_path: Path) -> Path:
    path = tmp_path / "landmarks.txt"
    path.write_text("\n".join(map(str, LANDMARKS)))
    return path


def test_bfm2017_units_scaling_and_winding(tmp_path, landmarks_file):
    model = load_bfm2017(write_bfm2017(tmp_path / "model2017-1_bfm_nomouth.h5"), landmarks_file,
                         n_shape=3, n_expression=2, n_reflectance=3)
    assert (model.n_shape, model.n_expression, model.n_reflectance) == (3, 2, 3)
    points, tris = dome_mm()
    neutral = points + 0.5  # millimetres as stored, expression mean added
    np.testing.assert_allclose(model.mean_shape, neutral - neutral.mean(0), atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(model.shape_basis.reshape(3, -1), axis=1),
                               np.sqrt(SHAPE_VAR[:3]), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(model.expression_basis.reshape(2, -1), axis=1),
                               np.sqrt(EXP_VAR[:2]), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(model.reflectance_basis.reshape(3, -1), axis=1),
                               np.sqrt(COLOR_VAR), rtol=1e-5)
    assert 0.2 <= model.mean_reflectance.min() and model.mean_reflectance.max() <= 0.8
    np.testing.assert_array_equal(model.triangles, tris)  # clockwise cells flipped to outward
    assert model.triangles.dtype == np.int64
    np.testing.assert_array_equal(model.landmarks, LANDMARKS)


def test_bfm2017_statismo08_scaled_basis_reads_the_same(tmp_path, landmarks_file):
    new = load_bfm2017(write_bfm2017(tmp_path / "v09.h5"), landmarks_file, 4, 3, 3)
    old = load_bfm2017(write_bfm2017(tmp_path / "v08.h5", scaled_basis=True), landmarks_file, 4, 3, 3)
    for name in ("shape_basis", "expression_basis", "reflectance_basis"):
        np.testing.assert_allclose(getattr(new, name), getattr(old, name), atol=1e-5, err_msg=name)


def test_bfm2017_errors(tmp_path, landmarks_file):
    no_var = write_bfm2017(tmp_path / "no_var.h5", drop="shape/model/pcaVariance")
    with pytest.raises(MofaError, match=r"no_var\.h5: missing 'shape/model/pcaVariance' \(expected a Basel Face Model 2017"):
        load_bfm2017(no_var, landmarks_file, 2, 2, 2)
    odd = write_bfm2017(tmp_path / "odd.h5", expression_vertices=N - 1)
    with pytest.raises(MofaError, match=r"odd\.h5: 'expression/model/mean' has .* entries, expected"):
        load_bfm2017(odd, landmarks_file, 2, 2, 2)
    good = write_bfm2017(tmp_path / "good.h5")
    with pytest.raises(MofaError, match=r"asked for 64 expression modes \(face_model.n_expression\), the model has 3"):
        load_bfm2017(good, landmarks_file, 2, 64, 2)
    with pytest.raises(MofaError, match=r"face_model\.landmarks_path"):
        load_bfm2017(good, None, 2, 2, 2)
    not_h5 = tmp_path / "not.h5"
    not_h5.write_text("hello")
    with pytest.raises(MofaError, match=r"not\.h5: not a readable HDF5 file"):
        load_bfm2017(not_h5, landmarks_file)


def test_outward_triangles_on_a_closed_surface():
    # A tetrahedron around the origin, one face wound inward.
    v = np.array([[0, 0, 1.0], [1, 0, -0.5], [-0.5, 0.9, -0.5], [-0.5, -0.9, -0.5]])
    outward = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 1], [1, 3, 2]])
    kept, flipped = outward_triangles(v, outward)
    assert not flipped and np.array_equal(kept, outward)
    fixed, flipped = outward_triangles(v, outward[:, ::-1])
    assert flipped
    a, b, c = (v[fixed[:, k]] for k in range(3))
    assert (np.einsum("ij,ij->i", np.cross(b - a, c - a), (a + b + c) / 3) > 0).all()
