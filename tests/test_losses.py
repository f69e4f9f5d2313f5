"""The loss terms against closed forms, hand-computed cases and float64 gradcheck."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from mofa.decoder import Decoder, PinholeCamera
from mofa.errors import MofaError
from mofa.landmarks import LANDMARKS_46
from mofa.losses import (INVISIBLE_RAMP, LossWeights, facing, inside_image, invisibility, landmark_loss, mofa_loss,
                         photometric_loss, regulariser, sample_image, visible_vertices)

# Zero light code: band 0 only, irradiance 0.7 * pi * Y00 on every normal.
AMBIENT_IRRADIANCE = 0.7 * math.pi * 0.5 / math.sqrt(math.pi)


def random_code(decoder: Decoder, batch: int, scale: float = 0.3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    code = scale * torch.randn(batch, decoder.code_size, generator=g, dtype=torch.float64)
    code[:, decoder.layout.slices["rotation"]] *= 0.5
    return code


@pytest.fixture(scope="module")
def decoder64(small_face_model):
    return Decoder(small_face_model, PinholeCamera(), dtype=torch.float64)


@pytest.fixture(scope="module")
def flat_decoder(small_face_model):
    """Constant albedo 0.5: under the zero light code every vertex has colour 0.5 * AMBIENT_IRRADIANCE."""
    model = dataclasses.replace(
        small_face_model,
        mean_reflectance=np.full_like(small_face_model.mean_reflectance, 0.5),
        reflectance_basis=np.zeros_like(small_face_model.reflectance_basis))
    return Decoder(model, PinholeCamera(), dtype=torch.float64)


# -- sampling -----------------------------------------------------------------------------------------

def test_sample_image_at_pixel_centres_and_half_pixels():
    images = torch.arange(2 * 3 * 4 * 5, dtype=torch.float64).reshape(2, 3, 4, 5)
    points = torch.tensor([[[0.0, 0.0], [4.0, 3.0], [2.0, 1.0]],
                           [[1.5, 2.0], [3.0, 0.5], [0.0, 0.0]]], dtype=torch.float64)
    out = sample_image(images, points)
    assert out.shape == (2, 3, 3)
    torch.testing.assert_close(out[0, 0], images[0, :, 0, 0])
    torch.testing.assert_close(out[0, 1], images[0, :, 3, 4])  # (u=4, v=3): row 3, column 4
    torch.testing.assert_close(out[0, 2], images[0, :, 1, 2])
    torch.testing.assert_close(out[1, 0], (images[1, :, 2, 1] + images[1, :, 2, 2]) / 2)
    torch.testing.assert_close(out[1, 1], (images[1, :, 0, 3] + images[1, :, 1, 3]) / 2)


def test_inside_image_is_the_pixel_centre_hull():
    points = torch.tensor([[[0.0, 0.0], [4.0, 3.0], [-0.01, 1.0], [4.01, 1.0], [1.0, 3.5]]])
    assert inside_image(points, 4, 5).tolist() == [[True, True, False, False, False]]


def test_sample_image_gradcheck_float64():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    # away from integer coordinates, where bilinear interpolation has kinks
    whole = torch.randint(0, 5, (2, 4, 2), generator=g).to(torch.float64)
    frac = 0.2 + 0.6 * torch.rand(2, 4, 2, generator=g, dtype=torch.float64)
    points = (whole + frac).requires_grad_(True)
    assert torch.autograd.gradcheck(sample_image, (images, points), eps=1e-6, atol=1e-6)


# -- photometric ----------------------------------------------------------------------------------------

def constant_image(colour, size=240, batch=1):
    return torch.tensor(colour, dtype=torch.float64)[None, :, None, None].expand(batch, 3, size, size).clone()


def test_photometric_loss_is_zero_when_the_image_matches_the_colours(flat_decoder):
    code = torch.zeros(2, flat_decoder.code_size, dtype=torch.float64)
    code[1, flat_decoder.layout.slices["rotation"]] = torch.tensor([0.2, 0.5, 0.1], dtype=torch.float64)
    decoded = flat_decoder(code)
    torch.testing.assert_close(decoded.colours, torch.full_like(decoded.colours, 0.5 * AMBIENT_IRRADIANCE))
    images = constant_image([0.5 * AMBIENT_IRRADIANCE] * 3, batch=2)
    for normalise in ("fixed", "visible"):
        loss = photometric_loss(images, decoded, flat_decoder.face_mask, normalise)
        assert loss.shape == (2,)
        assert torch.all(loss.abs() < 1e-12)


def test_photometric_fixed_and_visible_normalisation_differ_by_the_visible_fraction(flat_decoder):
    code = torch.zeros(2, flat_decoder.code_size, dtype=torch.float64)
    code[1, flat_decoder.layout.slices["rotation"]] = torch.tensor([0.0, 0.6, 0.0], dtype=torch.float64)
    code[1, flat_decoder.layout.slices["translation"]] = torch.tensor([6.0, 0.0, 0.0], dtype=torch.float64)
    decoded = flat_decoder(code)
    c = 0.5 * AMBIENT_IRRADIANCE
    images = constant_image([c, c + 0.1, c], batch=2)  # every vertex is off by 0.1 in green
    visible = visible_vertices(decoded, flat_decoder.face_mask, 240, 240)
    fraction = visible.double().sum(1) / flat_decoder.face_mask.sum()
    assert 0.3 < fraction[0] < 0.6 and fraction[1] < fraction[0]  # the shift pushes part of the sphere out
    by_visible = photometric_loss(images, decoded, flat_decoder.face_mask, "visible")
    by_fixed = photometric_loss(images, decoded, flat_decoder.face_mask, "fixed")
    torch.testing.assert_close(by_visible, torch.full_like(by_visible, 0.1))
    torch.testing.assert_close(by_fixed, 0.1 * fraction)
    with pytest.raises(ValueError, match="normalise"):
        photometric_loss(images, decoded, flat_decoder.face_mask, "mean")


def test_photometric_counts_only_the_face_region(flat_decoder):
    decoded = flat_decoder(torch.zeros(1, flat_decoder.code_size, dtype=torch.float64))
    c = 0.5 * AMBIENT_IRRADIANCE
    images = constant_image([c + 0.3, c, c])
    mask = flat_decoder.face_mask.clone()
    mask[decoded.screen[0, :, 0] < 119.5] = False  # only the image's right half is "face"
    expected = 0.3 * (decoded.visible[0] & mask).sum() / mask.sum()
    torch.testing.assert_close(photometric_loss(images, decoded, mask)[0], expected.double())


def test_photometric_loss_gradcheck_through_the_decoder(decoder64):
    # An affine image: bilinear sampling reproduces it exactly, so the loss is smooth in the screen
    # positions (no kinks at pixel centres) and gradcheck is reliable.
    v, u = torch.meshgrid(torch.arange(240.0), torch.arange(240.0), indexing="ij")
    images = torch.stack([0.2 + u / 400, 0.3 + v / 500, 0.6 - (u + v) / 900])[None].double().expand(2, -1, -1, -1)
    code = random_code(decoder64, 2).requires_grad_(True)

    def loss(c):
        return photometric_loss(images, decoder64(c), decoder64.face_mask)

    assert torch.autograd.gradcheck(loss, (code,), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_photometric_gradient_is_finite_at_a_perfect_match(flat_decoder):
    code = torch.zeros(1, flat_decoder.code_size, dtype=torch.float64, requires_grad=True)
    images = constant_image([0.5 * AMBIENT_IRRADIANCE] * 3)
    photometric_loss(images, flat_decoder(code), flat_decoder.face_mask).sum().backward()
    assert torch.isfinite(code.grad).all()


def test_invisible_cost_charges_each_hidden_face_vertex(flat_decoder):
    """A perfect colour match costs nothing but c per face vertex turned away or out of the image
    (the ramp aside); the paper's term (c = 0) charges those nothing."""
    code = torch.zeros(2, flat_decoder.code_size, dtype=torch.float64)
    code[1, flat_decoder.layout.slices["rotation"]] = torch.tensor([0.0, 0.6, 0.0], dtype=torch.float64)
    code[1, flat_decoder.layout.slices["translation"]] = torch.tensor([6.0, 0.0, 0.0], dtype=torch.float64)
    decoded = flat_decoder(code)
    images = constant_image([0.5 * AMBIENT_IRRADIANCE] * 3, batch=2)
    mask = flat_decoder.face_mask
    hidden = invisibility(decoded, mask, 240, 240)
    cos, inside = facing(decoded), inside_image(decoded.screen, 240, 240)
    assert torch.equal(hidden[~inside & mask[None]], torch.ones_like(hidden[~inside & mask[None]]))
    assert torch.all(hidden[(cos < 0) & mask[None]] == 1) and torch.all(hidden[(cos > INVISIBLE_RAMP) & inside] == 0)
    assert torch.all(hidden[:, ~mask] == 0)
    # the hard visible set is the front-facing half of the ramp's support and beyond
    assert torch.equal(decoded.visible, cos > 0)
    for normalise, count in (("fixed", mask.sum()), ("visible", visible_vertices(decoded, mask, 240, 240).sum(-1))):
        paper = photometric_loss(images, decoded, mask, normalise)
        charged = photometric_loss(images, decoded, mask, normalise, invisible_cost=0.3)
        torch.testing.assert_close(paper, torch.zeros_like(paper), atol=1e-12, rtol=0)
        torch.testing.assert_close(charged, 0.3 * hidden.sum(-1) / count)
    # every face vertex outside the loss's visible set V costs the full c; the ramp adds a little more
    outside_v = (~visible_vertices(decoded, mask, 240, 240) & mask[None]).sum(-1)
    assert torch.all(hidden.sum(-1) >= outside_v) and torch.all(outside_v > 0)
    with pytest.raises(MofaError, match="invisible_cost"):
        LossWeights(invisible_cost=-1.0)


def test_invisibility_gradcheck_through_the_decoder(decoder64):
    code = random_code(decoder64, 2).requires_grad_(True)

    def cost(c):
        return invisibility(decoder64(c), decoder64.face_mask, 240, 240).sum(-1)

    assert cost(code).sum() > 0  # some vertices on the ramp: the check is not of a constant
    assert torch.autograd.gradcheck(cost, (code,), eps=1e-6, atol=1e-5, rtol=1e-4)


# -- landmarks ------------------------------------------------------------------------------------------

def test_landmark_loss_by_hand():
    g = torch.Generator().manual_seed(2)
    targets = 240 * torch.rand(2, 46, 2, generator=g, dtype=torch.float64)
    offset = torch.zeros(2, 46, 2, dtype=torch.float64)
    offset[0, :, 0] = 10.0  # every point 10 px to the right
    offset[1, 0] = torch.tensor([3.0, 4.0], dtype=torch.float64)  # one point 5 px off
    offset[1, 5] = torch.tensor([0.0, 12.0], dtype=torch.float64)  # one point 12 px off
    loss = landmark_loss(targets + offset, targets, None, 240)
    torch.testing.assert_close(loss, torch.tensor([46 * (10 / 240) ** 2, (25 + 144) / 240 ** 2],
                                                  dtype=torch.float64))
    assert 0.05 < loss[0] < 0.1  # the documented scale: same order as the photometric term
    conf = torch.ones(2, 46, dtype=torch.float64)
    conf[0, :23] = 0.0
    conf[1, 5] = 0.5
    loss = landmark_loss(targets + offset, targets, conf, 240)
    torch.testing.assert_close(loss, torch.tensor([23 * (10 / 240) ** 2, (25 + 72) / 240 ** 2],
                                                  dtype=torch.float64))
    # (height, width): u is divided by the width, v by the height
    one = landmark_loss(torch.tensor([[[4.0, 6.0]]]), torch.zeros(1, 1, 2), None, (300, 200))
    torch.testing.assert_close(one, torch.tensor([(4 / 200) ** 2 + (6 / 300) ** 2]))


def test_regulariser_by_hand():
    shape = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    expression = torch.tensor([[1.0, -1.0, 1.0], [2.0, 0.0, 0.0]])
    reflectance = torch.tensor([[3.0], [0.0]])
    torch.testing.assert_close(regulariser(shape, expression, reflectance),
                               torch.tensor([5 + 1.7e-3 * 9 + 0.8 * 3, 0.8 * 4]))
    torch.testing.assert_close(regulariser(shape, expression, reflectance, 1.0, 2.0),
                               torch.tensor([5 + 9 + 2 * 3, 2 * 4.0]))


# -- the whole loss -------------------------------------------------------------------------------------

def test_loss_weights_defaults_and_config():
    w = LossWeights()
    assert (w.photo, w.land, w.reg, w.reflectance, w.expression, w.photo_normalise) == \
        (1.92, 0.0, 2.9e-5, 1.7e-3, 0.8, "fixed")
    w = LossWeights.from_config({"land": 1, "reg": "1e-3", "photo_normalise": "visible"})
    assert (w.land, w.reg, w.photo, w.photo_normalise) == (1.0, 1e-3, 1.92, "visible")
    assert LossWeights.from_config(None) == LossWeights()
    with pytest.raises(MofaError, match="unknown keys \\['w_photo'\\]"):
        LossWeights.from_config({"w_photo": 1.0})
    with pytest.raises(MofaError, match="'reg'"):
        LossWeights.from_config({"reg": "lots"})
    with pytest.raises(MofaError, match="photo_normalise"):
        LossWeights.from_config({"photo_normalise": "mean"})
    with pytest.raises(MofaError, match="'land' must be >= 0"):
        LossWeights(land=-1.0)


def test_mofa_loss_combines_the_terms(decoder64):
    code = random_code(decoder64, 3)
    g = torch.Generator().manual_seed(4)
    images = torch.rand(3, 3, 240, 240, generator=g, dtype=torch.float64)
    decoded = decoder64(code)
    truth = decoded.screen[:, decoder64.landmarks].detach().clone()  # (3, 68, 2) px
    landmarks = truth.clone()
    landmarks[:, :, 0] += 3.0
    landmarks[:, 60:68] += 50.0  # inner lips: not in the 46, must not count
    conf = torch.ones(3, 68, dtype=torch.float64)
    conf[2] = 0.5
    weights = LossWeights(land=1.0)
    terms = mofa_loss(decoder64, code, images, landmarks, conf, weights)
    parts = decoder64.layout.split(code)
    photo = photometric_loss(images, decoded, decoder64.face_mask)
    reg = regulariser(parts.shape, parts.expression, parts.reflectance)
    land = torch.tensor([46 * (3 / 240) ** 2] * 2 + [23 * (3 / 240) ** 2], dtype=torch.float64)
    torch.testing.assert_close(terms.photometric, photo)
    torch.testing.assert_close(terms.regulariser, reg)
    torch.testing.assert_close(terms.landmark, land)
    torch.testing.assert_close(terms.total, (1.92 * photo + 2.9e-5 * reg + land).mean())
    assert set(terms.log()) == {"total", "photometric", "regulariser", "landmark"}
    # without landmarks the term is absent, and a positive landmark weight is refused
    plain = mofa_loss(decoder64, code, images)
    assert plain.landmark is None and "landmark" not in plain.log()
    torch.testing.assert_close(plain.total, (1.92 * photo + 2.9e-5 * reg).mean())
    with pytest.raises(ValueError, match="no landmarks"):
        mofa_loss(decoder64, code, images, weights=weights)
    with pytest.raises(ValueError, match="68, 2"):
        mofa_loss(decoder64, code, images, landmarks[:, list(LANDMARKS_46)], weights=weights)
    with pytest.raises(ValueError, match="240x240"):
        mofa_loss(decoder64, code, images[..., :200, :200])


def test_mofa_loss_backpropagates_to_the_code(small_face_model):
    decoder = Decoder(small_face_model, PinholeCamera())  # float32, as in training
    code = torch.zeros(2, decoder.code_size, requires_grad=True)
    images = torch.rand(2, 3, 240, 240, generator=torch.Generator().manual_seed(5))
    landmarks = decoder(code).screen[:, decoder.landmarks].detach() + 2.0
    terms = mofa_loss(decoder, code, images, landmarks, weights=LossWeights(land=1.0))
    terms.total.backward()
    assert torch.isfinite(code.grad).all() and code.grad.abs().sum() > 0
