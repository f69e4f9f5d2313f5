"""The ICT-FaceKit loader on the real copy (MOFA_ICT_DIR), the model cache and the model card."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from mofa.decoder import Decoder, PinholeCamera
from mofa.errors import MofaError
from mofa.facemodel.ict import expression_pca, load_ict, read_obj_triangles, read_obj_vertices
from mofa.facemodel.model import FaceModel


def test_full_mesh_counts_and_landmarks(ict_model, ict_dir):
    assert ict_model.n_vertices == 26719
    # 548 triangles + 25,836 quads split in two
    assert len(ict_model.triangles) == 548 + 2 * 25836
    assert (ict_model.n_shape, ict_model.n_expression, ict_model.n_reflectance) == (80, 53, 80)
    lms = ict_model.landmarks
    assert lms.shape == (68,) and len(set(lms.tolist())) == 68
    assert lms.max() < ict_model.n_vertices
    assert ict_model.regions["narrow_face"][lms].all(), "all 68 landmarks lie in the training region"
    info = json.loads((ict_dir / "FaceXModel" / "vertex_indices.json").read_text())
    assert lms.tolist() == info["idx_to_landmark_verts"], "README list and vertex_indices.json agree"


def test_units_are_millimetres(ict_model):
    narrow = ict_model.mean_shape[ict_model.regions["narrow_face"]]
    width, height = np.ptp(narrow[:, 0]), np.ptp(narrow[:, 1])
    assert 120 < width < 180 and 160 < height < 240, (width, height)  # an adult face, in mm
    lm = ict_model.mean_shape[ict_model.landmarks]
    interocular = np.linalg.norm(lm[36] - lm[45])  # outer eye corners: about 90-100 mm
    assert 80 < interocular < 110


def test_identity_modes_are_the_published_offsets(ict_model, ict_dir):
    neutral = read_obj_vertices(ict_dir / "FaceXModel" / "generic_neutral_mesh.obj")
    ident = read_obj_vertices(ict_dir / "FaceXModel" / "identity000.obj")
    np.testing.assert_allclose(ict_model.shape_basis[0], (ident - neutral) * 10.0, atol=1e-4)


def test_expression_modes_are_orthogonal_and_span_the_blendshapes(ict_model, ict_dir):
    basis = ict_model.expression_basis.reshape(ict_model.n_expression, -1).astype(np.float64)
    gram = basis @ basis.T
    norms = np.sqrt(np.diag(gram))
    off = gram / np.outer(norms, norms) - np.eye(len(gram))
    assert np.abs(off).max() < 1e-4
    assert np.all(np.diff(norms) <= 1e-3 * norms[:-1]), "modes sorted by standard deviation"
    neutral = read_obj_vertices(ict_dir / "FaceXModel" / "generic_neutral_mesh.obj")
    smile = (read_obj_vertices(ict_dir / "FaceXModel" / "mouthSmile_L.obj") - neutral).reshape(-1) * 10.0
    coeffs = np.linalg.lstsq(basis.T, smile, rcond=None)[0]
    assert np.linalg.norm(basis.T @ coeffs - smile) < 1e-4 * np.linalg.norm(smile)
    assert 0.05 < np.abs(coeffs).max() < 5, "a full blendshape has coefficients of order one"
    smile_index = json.loads((ict_dir / "FaceXModel" / "vertex_indices.json").read_text())["expressions"].index("mouthSmile_L")
    np.testing.assert_allclose(ict_model.expression_examples[smile_index], coeffs, atol=1e-3)


def test_expression_pca_on_a_known_case():
    offsets = np.zeros((2, 2, 3))
    offsets[0, 0, 0], offsets[1, 1, 1] = 3.0, 4.0  # two orthogonal blendshapes
    modes, examples = expression_pca(offsets, 2)
    # singular values 4 and 3, over sqrt(2) samples
    np.testing.assert_allclose(np.linalg.norm(modes.reshape(2, -1), axis=1), [4 / np.sqrt(2), 3 / np.sqrt(2)])
    assert modes[0, 1, 1] > 0 and modes[1, 0, 0] > 0
    # each blendshape is reproduced by its example coefficients
    np.testing.assert_allclose(np.einsum("mk,knc->mnc", examples, modes), offsets, atol=1e-12)
    with pytest.raises(MofaError, match="at most 2"):
        expression_pca(offsets, 3)


def test_triangles_face_outwards(ict_model):
    narrow = ict_model.submesh("narrow_face")
    decoder = Decoder(narrow, PinholeCamera())
    out = decoder(torch.zeros(1, decoder.code_size))
    nose_tip = int(narrow.landmarks[30])
    # camera space: -z points at the camera
    assert out.normals[0, nose_tip, 2] < -0.8
    assert out.visible[0].float().mean() > 0.75


def test_reflectance_prior_is_plausible_and_orthogonal(ict_model):
    skin = ict_model.regions["narrow_face"]
    mean = ict_model.mean_reflectance
    assert mean.min() >= 0 and mean.max() <= 1
    r, g, b = mean[skin].mean(0)
    assert r > g > b, "skin is reddish"
    lips = ict_model.landmarks[[50, 52, 56, 58]]  # upper and lower lip, outer contour
    assert (mean[lips, 0] - mean[lips, 1]).mean() > (r - g) + 0.05, "lips redder than skin"
    basis = ict_model.reflectance_basis.reshape(ict_model.n_reflectance, -1).astype(np.float64)
    gram = basis @ basis.T
    norms = np.sqrt(np.diag(gram))
    assert np.abs(gram / np.outer(norms, norms) - np.eye(len(gram))).max() < 1e-4
    for k in range(3):  # +-3 standard deviations of the leading modes stay plausible
        for sign in (-3, 3):
            albedo = mean[skin] + sign * ict_model.reflectance_basis[k][skin]
            assert -0.05 < albedo.min() and albedo.max() < 1.05


def test_zero_code_face_is_centred_and_fills_the_crop(ict_model, default_camera):
    narrow = ict_model.submesh(ict_model.face_region)
    decoder = Decoder(narrow, default_camera)
    screen = decoder(torch.zeros(1, decoder.code_size)).screen[0]
    size = default_camera.image_size
    lo, hi = screen.min(0).values, screen.max(0).values
    centre = (lo + hi) / 2
    assert torch.all((centre - (size - 1) / 2).abs() < 0.05 * size), centre
    height = (hi[1] - lo[1]) / size
    assert 0.5 <= height <= 0.9, height
    assert lo.min() >= 0 and hi.max() <= size - 1


def test_cache_round_trip_and_bad_file(ict_model, tmp_path):
    small = ict_model.submesh("narrow_face").truncated(5, 4, 3)
    path = small.save(tmp_path / "ict.npz")
    back = FaceModel.load(path)
    for field in ("mean_shape", "shape_basis", "expression_basis", "reflectance_basis", "triangles", "landmarks"):
        np.testing.assert_array_equal(getattr(back, field), getattr(small, field))
    assert back.card() == small.card()
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(MofaError, match="broken.npz: not a readable face-model"):
        FaceModel.load(bad)
    with pytest.raises(MofaError, match="asked for 90 shape modes, it has 5"):
        small.truncated(n_shape=90)


def test_obj_reader_takes_fresh_clone_files(tmp_path):
    obj = tmp_path / "m.obj"
    obj.write_text("# header\nmtllib x.mtl\nv 1 2 3\nv 4 5 6\nv 7 8 9\nv 1 1 1\nvt 0 0\nvn 0 0 1\n"
                   "usemtl skin\nf 1/1 2/1 3/1 4/1\nf 1/1/1 3/1/1 4/1/1\n")
    np.testing.assert_array_equal(read_obj_vertices(obj), [[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 1, 1]])
    np.testing.assert_array_equal(read_obj_triangles(obj), [[0, 1, 2], [0, 2, 3], [0, 2, 3]])


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(MofaError, match="not an ICT-FaceKit folder"):
        load_ict(tmp_path)


def test_model_card_names_the_reflectance_source(ict_model):
    card = ict_model.card()
    for fact in ("vertices          26719", "triangles         52220", "expression modes  53", "units             mm",
                 "MIT", "NOT scan-derived"):
        assert fact in card, fact


def test_the_drawn_region_is_decided_in_one_place(ict_model, small_face_model):
    """FaceModel.drawn: the region asked for where the model has it, else face_head, else full_face, else
    the whole model (synthetic images, the model card, exported meshes and the renderer bench use it)."""
    assert ict_model.drawn_region() == "face_head"
    assert ict_model.drawn_region("full_face") == "full_face"
    assert ict_model.drawn_region("no_such_region") == "face_head"
    assert ict_model.drawn().n_vertices == int(ict_model.regions["face_head"].sum())
    without_head = dataclasses.replace(ict_model, regions={k: v for k, v in ict_model.regions.items() if k != "face_head"})
    assert without_head.drawn_region() == "full_face"
    bare = dataclasses.replace(small_face_model, regions={"training": small_face_model.training_mask},
                               face_region="training")  # neither face_head nor full_face
    assert bare.drawn_region() is None and bare.drawn() is bare
