"""Synthetic ground truth: deterministic from the seed, stored ground truth consistent with the decoder."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mofa.data.backgrounds import KINDS, _blend, sample_background
from mofa.data.synthetic import CodeDistribution, SyntheticSet, _to_uint8, generate_split, sample_code
from mofa.decoder import Decoder, PinholeCamera
from mofa.decoder.layout import CodeLayout
from mofa.errors import MofaError

CAMERA = PinholeCamera()


@pytest.fixture(scope="module")
def ci_model(ict_model):
    return ict_model.truncated(8, 10, 8)


def test_generation_is_deterministic_and_independent_of_batching(ci_model, tmp_path):
    a = generate_split(tmp_path / "a", "test", 6, ci_model, CAMERA, seed=3, dist=CodeDistribution(),
                       batch_size=4, progress=False)
    generate_split(tmp_path / "b", "test", 6, ci_model, CAMERA, seed=3, dist=CodeDistribution(),
                   batch_size=6, progress=False)
    generate_split(tmp_path / "c", "test", 6, ci_model, CAMERA, seed=4, dist=CodeDistribution(),
                   batch_size=6, progress=False)
    for name in ("images", "codes", "landmarks", "landmark_visible", "vertices"):
        np.testing.assert_array_equal(np.load(tmp_path / "a/test" / f"{name}.npy"),
                                      np.load(tmp_path / "b/test" / f"{name}.npy"), err_msg=name)
    assert not np.array_equal(np.load(tmp_path / "a/test/images.npy"), np.load(tmp_path / "c/test/images.npy"))
    assert a["count"] == 6 and a["code_layout"]["shape"] == 8
    assert json.loads((tmp_path / "a/test/manifest.json").read_text())["seed"] == 3
    assert not (tmp_path / "a/test.partial").exists(), "the partial folder is renamed when complete"
    samples = pd.read_csv(tmp_path / "a/test/samples.csv")
    assert list(samples["index"]) == list(range(6)) and samples.yaw_deg.abs().max() <= 45


def test_generation_is_independent_of_the_number_of_processes(ci_model, tmp_path):
    """Chunks of 2 samples claimed by 1 or 3 processes: the same bytes in every array and samples.csv."""
    common = {"n": 8, "model": ci_model, "camera": CAMERA, "seed": 5, "dist": CodeDistribution(), "batch_size": 2,
              "progress": False}
    generate_split(tmp_path / "one", "train", workers=1, **common)
    generate_split(tmp_path / "three", "train", workers=3, **common)
    for name in ("images", "codes", "landmarks", "landmark_visible", "vertices"):
        np.testing.assert_array_equal(np.load(tmp_path / "one/train" / f"{name}.npy"),
                                      np.load(tmp_path / "three/train" / f"{name}.npy"), err_msg=name)
    assert (tmp_path / "one/train/samples.csv").read_text() == (tmp_path / "three/train/samples.csv").read_text()


def test_pixel_noise_and_rounding_as_numpy_normal_draws_them():
    """_to_uint8 (in place, standard normals times the std) gives the bytes of the plain formula with
    rng.normal; without noise it rounds the float32 image."""
    image = np.random.default_rng(0).random((16, 16, 3), dtype=np.float32) * 1.1 - 0.05  # some out of [0, 1]
    for std in (0.01, 0.0):
        out = np.empty(image.shape, np.uint8)
        _to_uint8(image, np.random.default_rng(7), std, out)
        noisy = image + np.random.default_rng(7).normal(0, std, image.shape) if std else image
        np.testing.assert_array_equal(out, np.clip(np.rint(noisy * 255), 0, 255).astype(np.uint8))


def test_stored_ground_truth_matches_the_decoder(ci_model, tmp_path):
    generate_split(tmp_path, "train", 4, ci_model, CAMERA, seed=0, dist=CodeDistribution(), progress=False)
    data = SyntheticSet(tmp_path / "train")
    batch = data.batch([2, 0])
    assert batch["images"].shape == (2, 3, 240, 240) and batch["images"].dtype == torch.float32
    face = ci_model.submesh(ci_model.face_region)
    out = Decoder(face, CAMERA)(batch["codes"])
    torch.testing.assert_close(batch["vertices"], out.vertices, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(batch["landmarks"], out.screen[:, face.landmarks], atol=1e-3, rtol=1e-5)
    # the face is drawn where the decoder says: the image differs from its background at the nose tip
    nose = batch["landmarks"][0, 30].round().long()
    assert batch["landmark_visible"][0, 30]
    pixel = batch["images"][0, :, nose[1], nose[0]]
    colour = out.colours[0, face.landmarks[30]].clamp(0, 1)
    assert (pixel - colour).abs().max() < 0.1


def test_code_distribution(ci_model):
    layout = CodeLayout.for_model(ci_model)
    dist = CodeDistribution()
    codes = np.stack([sample_code(np.random.default_rng([0, i]), layout, ci_model, dist)[0] for i in range(400)])
    parts = layout.split(torch.from_numpy(codes))
    assert abs(parts.shape.std().item() - 1) < 0.1 and abs(parts.reflectance.mean().item()) < 0.1
    yaw = np.degrees(parts.rotation[:, 1].numpy())
    assert yaw.min() >= -45 and yaw.max() <= 45 and yaw.std() > 20
    assert np.abs(np.degrees(parts.rotation[:, 0].numpy())).max() <= 20  # pitch clipped at 2 std
    light = parts.light.reshape(-1, 3, 9)
    # mostly white light: the channels' coefficients are far more alike than the coefficients themselves
    assert (light - light.mean(1, keepdim=True)).std() < 0.3 * light[..., 1:4].std()
    # realistic expressions: sparse blendshape mixes reproduce the model's own examples
    assert ci_model.expression_examples is not None and (parts.expression.abs().sum(1) == 0).any()


def test_backgrounds_cover_every_kind(tmp_path):
    import cv2
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((50, 80, 3), (10, 200, 30), np.uint8))
    from mofa.data.backgrounds import list_images
    files = list_images(folder)
    for kind in KINDS:
        img, got = sample_background(np.random.default_rng(0), 32, {kind: 1.0}, files)
        assert got == kind and img.shape == (32, 32, 3) and img.min() >= 0 and img.max() <= 1
    img, _ = sample_background(np.random.default_rng(0), 32, {"folder": 1.0}, files)
    np.testing.assert_allclose(img[0, 0], [30 / 255, 200 / 255, 10 / 255], atol=1e-6)  # BGR file -> RGB
    # the tinted kinds mix two colours per pixel as the plain broadcast formula does, to the bit
    a, b = np.array([0.1, 0.5, 0.9]), np.array([0.8, 0.2, 0.3])
    for t in (np.random.default_rng(1).random((8, 8), dtype=np.float32), np.linspace(0, 1, 64).reshape(8, 8)):
        np.testing.assert_array_equal(_blend(a, b, t), (a + t[..., None] * (b - a)).astype(np.float32))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MofaError, match="holds no readable images"):
        list_images(tmp_path / "empty")


def test_missing_split_is_a_clear_error(tmp_path):
    with pytest.raises(MofaError, match="not a synthetic split"):
        SyntheticSet(tmp_path)


def test_generator_uses_the_configured_ambient_offset(small_face_model, tmp_path):
    """light.ambient_offset reaches the images: a brighter ambient term gives brighter faces, and the
    manifest records it."""
    camera = PinholeCamera(image_size=48, focal_length_px=160.0)
    dist = CodeDistribution()
    common = dict(n=2, model=small_face_model, camera=camera, seed=3, dist=dist, render_region="all",
                  background_mix={"colour_field": 1.0}, image_noise_std=0.0, workers=1, progress=False)
    dim = generate_split(tmp_path / "dim", "train", ambient_offset=0.4, **common)
    bright = generate_split(tmp_path / "bright", "train", ambient_offset=0.9, **common)
    assert (dim["ambient_offset"], bright["ambient_offset"]) == (0.4, 0.9)
    a = np.load(tmp_path / "dim" / "train" / "images.npy").astype(float)
    b = np.load(tmp_path / "bright" / "train" / "images.npy").astype(float)
    face = np.abs(a - b).sum(-1) > 0  # only face pixels differ (same backgrounds)
    assert face.mean() > 0.05
    assert b[face].mean() > a[face].mean() + 10


def test_background_files_that_are_no_images_are_left_out_with_their_reason(tmp_path, caplog):
    import cv2

    from mofa.data.backgrounds import list_images
    cv2.imwrite(str(tmp_path / "b.png"), np.full((16, 16, 3), 90, np.uint8))
    (tmp_path / "a.jpg").write_text("not an image")
    (tmp_path / "c.png").write_bytes(b"")
    assert list_images(tmp_path) == [tmp_path / "b.png"]
    assert "skipping" in caplog.text and str(tmp_path / "a.jpg") in caplog.text and str(tmp_path / "c.png") in caplog.text
    (tmp_path / "b.png").unlink()
    with pytest.raises(MofaError, match="holds no readable images"):
        list_images(tmp_path)
