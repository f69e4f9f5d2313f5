"""The evaluation metrics and the landmark subset, on constructed cases with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mofa.landmarks import IBUG_GROUPS, LANDMARKS_46, select_46
from mofa.metrics import (angle_errors, geometric_error, landmark_error, nme_aflw2000, nme_table, photometric_error,
                          rotation_error, similarity_align, summarise, yaw_bins)


# -- the 46-point subset --------------------------------------------------------------------------------

def test_landmarks_46_is_brows_nose_eyes_outer_lips_and_three_jaw_points():
    assert len(LANDMARKS_46) == 46 and list(LANDMARKS_46) == sorted(set(LANDMARKS_46))
    assert set(LANDMARKS_46) == {4, 8, 12} | set(range(17, 60))
    assert not set(LANDMARKS_46) & set(range(60, 68))
    covered = sorted(i for s in IBUG_GROUPS.values() for i in range(68)[s])
    assert covered == list(range(68))
    points = np.arange(68 * 2).reshape(1, 68, 2)
    assert select_46(points).shape == (1, 46, 2)
    assert select_46(torch.as_tensor(points))[0, 0, 0].item() == 8  # point 4, x
    with pytest.raises(ValueError, match="68 landmarks"):
        select_46(points[:, :46])


# -- geometry -------------------------------------------------------------------------------------------

def test_scaled_and_shifted_copy_has_zero_geometric_error():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(3, 50, 3)) * 40
    pred = true * np.array([0.7, 1.0, 1.6])[:, None, None] + rng.normal(size=(3, 1, 3)) * 100
    np.testing.assert_allclose(geometric_error(pred, true), 0.0, atol=1e-10)
    np.testing.assert_allclose(similarity_align(pred, true), true, atol=1e-10)
    np.testing.assert_allclose(geometric_error(torch.as_tensor(pred), torch.as_tensor(true)), 0.0, atol=1e-10)


def test_rotation_is_not_compensated():
    # Unit points on a regular hexagon in the xy plane, rotated by theta about z: the best scale is
    # cos(theta), and each point is then sin(theta) from its true position (|cos R t - t|^2 = sin^2).
    angles = np.arange(6) * np.pi / 3
    true = np.stack([np.cos(angles), np.sin(angles), np.zeros(6)], -1)[None]
    theta = np.radians(30.0)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    pred = 2.5 * true @ rot.T + np.array([10.0, -4.0, 7.0])  # also scaled and shifted: no effect
    np.testing.assert_allclose(geometric_error(pred, true), [math.sin(theta)], rtol=1e-12)
    np.testing.assert_allclose(geometric_error(pred * 20, true * 20), [20 * math.sin(theta)], rtol=1e-12)


def test_rotation_error_is_scipys_relative_rotation_angle():
    from scipy.spatial.transform import Rotation
    pred, true = Rotation.random(64, random_state=3), Rotation.random(64, random_state=4)
    expected = np.degrees((pred.inv() * true).magnitude())
    np.testing.assert_allclose(rotation_error(pred.as_matrix(), true.as_matrix()), expected, atol=1e-6)
    # a known turn about one axis, and none
    turn = Rotation.from_euler("y", 25.0, degrees=True) * true
    np.testing.assert_allclose(rotation_error(turn.as_matrix(), true.as_matrix()), 25.0, atol=1e-6)
    np.testing.assert_allclose(rotation_error(torch.as_tensor(true.as_matrix()), true.as_matrix()), 0.0, atol=1e-5)


def test_angle_errors_wrap_around():
    pred = np.radians([[179.0, 10.0, -30.0]])
    true = np.radians([[-179.0, 4.0, 30.0]])
    np.testing.assert_allclose(angle_errors(pred, true), [[2.0, 6.0, 60.0]], atol=1e-9)


def test_geometric_error_vertex_mask_limits_fit_and_mean():
    rng = np.random.default_rng(1)
    true = rng.normal(size=(1, 20, 3))
    pred = 2.0 * true + 1.0
    pred[0, 15:] += 50.0  # outside the face region
    mask = np.arange(20) < 15
    np.testing.assert_allclose(geometric_error(pred, true, mask), [0.0], atol=1e-10)
    assert geometric_error(pred, true)[0] > 1.0


# -- images ---------------------------------------------------------------------------------------------

def test_photometric_error_of_a_channel_offset():
    rng = np.random.default_rng(2)
    target = rng.uniform(0, 0.8, size=(2, 8, 9, 3))
    rendered = target.copy()
    rendered[..., 1] += 0.1
    rendered[1, :4] += 5.0  # outside the mask of image 1: must not count
    mask = np.ones((2, 8, 9), dtype=bool)
    mask[1, :4] = False
    np.testing.assert_allclose(photometric_error(rendered, target, mask), [0.1, 0.1], rtol=1e-12)
    mask[0] = False
    out = photometric_error(rendered, target, mask)
    assert np.isnan(out[0]) and out[1] == pytest.approx(0.1)


# -- 2D landmarks ---------------------------------------------------------------------------------------

def grid_landmarks(batch=2) -> np.ndarray:
    """68 points on a 17 x 4 grid spanning 40 px wide, 10 px high (box area 400, sqrt 20)."""
    x, y = np.meshgrid(np.linspace(0, 40, 17), np.linspace(0, 10, 4))
    points = np.stack([x.ravel(), y.ravel()], -1) + np.array([100.0, 50.0])
    return np.repeat(points[None], batch, 0)


def test_landmark_error_of_a_known_offset():
    true = grid_landmarks()
    pred = true.copy()
    pred[0] += np.array([3.0, 0.0])
    pred[1] += np.array([0.0, -3.0])
    np.testing.assert_allclose(landmark_error(pred, true), [3.0, 3.0])
    lips = true.copy()
    lips[:, 60:68] += np.array([3.0, 0.0])  # inner lips: outside the 46
    np.testing.assert_allclose(landmark_error(lips, true), [0.0, 0.0])
    np.testing.assert_allclose(landmark_error(lips, true, subset=None), [8 * 3 / 68] * 2)
    with pytest.raises(ValueError, match="68, 2"):
        landmark_error(pred[:, :46], true[:, :46])


def test_nme_by_hand():
    true = grid_landmarks()
    pred = true.copy()
    pred[0] += np.array([2.0, 0.0])  # 2 px everywhere: 2 / sqrt(40 * 10) = 0.1
    pred[1, 0] += np.array([6.0, 8.0])  # one point 10 px off: 10 / 68 / 20
    np.testing.assert_allclose(nme_aflw2000(pred, true), [0.1, 10 / 68 / 20])


def test_yaw_bins_and_nme_table():
    yaw = np.array([-10.0, 45.0, -75.0, 30.0, 60.0, 95.0, np.nan, 0.0])
    assert yaw_bins(yaw).tolist() == [0, 1, 2, 0, 1, 2, -1, 0]  # 3DDFA's third bin: |yaw| > 60, no cap
    nme = np.array([0.02, 0.04, 0.08, 0.04, 0.06, 0.10, 1.0, np.nan])
    row = nme_table(nme, yaw)
    assert row["0-30"] == pytest.approx(0.03) and row["30-60"] == pytest.approx(0.05)
    assert row["60-90"] == pytest.approx(0.09) and row["mean"] == pytest.approx((0.03 + 0.05 + 0.09) / 3)
    assert (row["n_0-30"], row["n_30-60"], row["n_60-90"]) == (2, 2, 2)
    assert math.isnan(nme_table(nme[:2], yaw[:2])["mean"])  # empty 60-90 bin


def test_every_embedded_aflw2000_image_falls_in_a_yaw_bin(aflw_dir):
    """The six embedded images with |yaw| > 90 (-103, -95.5, 118.9, -117.6, -351.2, 187.8) go into the
    third bin, as 3DDFA's benchmark puts them, so the bins' counts sum to the images scored."""
    from mofa.realdata.adapters import iter_aflw2000

    samples = list(iter_aflw2000(aflw_dir))
    yaw = np.array([s.yaw_deg for s in samples], dtype=float)
    beyond = np.sort(yaw[np.abs(yaw) > 90])
    np.testing.assert_allclose(beyond, [-351.2, -117.6, -103.0, -95.5, 118.9, 187.8], atol=0.1)
    bins = yaw_bins(yaw)
    assert (bins[np.abs(yaw) > 90] == 2).all() and (bins >= 0).all()
    row = nme_table(np.full(len(yaw), 0.05), yaw)
    assert row["n_0-30"] + row["n_30-60"] + row["n_60-90"] == len(yaw) == 1000


def test_summarise_ignores_nan():
    out = summarise(np.array([1.0, 2.0, np.nan, 3.0, 4.0]))
    assert out == pytest.approx({"mean": 2.5, "median": 2.5, "std": math.sqrt(1.25), "p90": 3.7, "n": 4})
    empty = summarise([np.nan])
    assert empty["n"] == 0 and math.isnan(empty["mean"])
