"""The analytic decoder against independent references: gradcheck, SciPy rotations, closed-form
projection, numerically integrated SH irradiance, and geometric facts about the face model."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from scipy.special import sph_harm_y

from conftest import make_small_face_model
from mofa.decoder import (CodeLayout, Decoder, PinholeCamera, camera_rotation, euler_to_matrix,
                          light_coefficients, project, shade, vertex_normals)

CAMERA = PinholeCamera(image_size=240, focal_length_px=800.0, distance_mm=1000.0, translation_scale_mm=10.0)


def random_code(decoder: Decoder, batch: int, scale: float = 0.3, seed: int = 0,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    code = scale * torch.randn(batch, decoder.code_size, generator=g, dtype=dtype)
    code[:, decoder.layout.slices["rotation"]] *= 0.5  # modest pose: radians
    return code


def test_layout_is_derived_from_the_model(small_face_model):
    layout = CodeLayout.for_model(small_face_model)
    assert layout.sizes == {"shape": 4, "expression": 3, "reflectance": 4, "rotation": 3,
                            "translation": 3, "light": 27}
    assert layout.size == 4 + 3 + 4 + 3 + 3 + 27
    code = torch.arange(layout.size, dtype=torch.float32)[None]
    parts = layout.split(code)
    assert parts.light[0, 0].item() == layout.size - 27
    assert torch.equal(layout.join(**parts._asdict()), code)
    with pytest.raises(ValueError, match="layout needs 44"):
        layout.split(torch.zeros(1, 257))
    mask = layout.mask("rotation", "light")
    assert mask.dtype == torch.bool and mask.sum() == 3 + 27
    assert torch.equal(layout.split(mask[None].float()).rotation, torch.ones(1, 3))
    assert not layout.mask().any()
    # single pose entries by name: pitch, yaw, roll are the rotation's columns, tx, ty, tz the translation's
    assert [layout.index(e) for e in ("pitch", "yaw", "roll", "tx", "ty", "tz")] == list(range(11, 17))
    assert layout.split(layout.mask("yaw", "tz")[None].float()).translation.tolist() == [[0.0, 0.0, 1.0]]
    with pytest.raises(ValueError, match="unknown code part 'nose'"):
        layout.mask("nose")


def test_decoder_gradcheck_float64():
    model = make_small_face_model(subdivisions=2)  # 162 vertices keeps the full Jacobian check fast
    decoder = Decoder(model, CAMERA, dtype=torch.float64)
    code = random_code(decoder, 2, dtype=torch.float64).requires_grad_(True)

    def outputs(c):
        out = decoder(c)
        return out.screen, out.colours, out.vertices

    assert torch.autograd.gradcheck(outputs, (code,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_rotation_matches_scipy_extrinsic_xyz():
    angles = torch.tensor([[0.3, -0.7, 1.1], [-1.2, 0.4, -0.2], [0.0, 0.0, 0.0]], dtype=torch.float64)
    ours = euler_to_matrix(angles).numpy()
    reference = Rotation.from_euler("xyz", angles.numpy()).as_matrix()  # extrinsic x, then y, then z
    np.testing.assert_allclose(ours, reference, atol=1e-12)


def test_projection_of_known_points():
    cam = PinholeCamera(image_size=100, focal_length_px=500.0, distance_mm=800.0)
    points = torch.tensor([[[0.0, 0.0, 800.0], [80.0, -40.0, 800.0], [10.0, 20.0, 400.0]]])
    expected = torch.tensor([[[49.5, 49.5], [49.5 + 50.0, 49.5 - 25.0], [49.5 + 12.5, 49.5 + 25.0]]])
    torch.testing.assert_close(project(points, cam), expected)


def test_model_to_camera_is_a_half_turn_about_x():
    # A frontal face: model up (+y) is image up (-y in camera space), model out (+z) faces the camera (-z).
    rot = camera_rotation(torch.zeros(1, 3))[0]
    torch.testing.assert_close(rot @ torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, -1.0, 0.0]))
    torch.testing.assert_close(rot @ torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, -1.0]))


def real_sh(l: int, m: int, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Real spherical harmonics from SciPy's complex ones (independent of mofa.decoder.lighting)."""
    if m == 0:
        return sph_harm_y(l, 0, theta, phi).real
    y = sph_harm_y(l, abs(m), theta, phi)
    return math.sqrt(2) * (-1) ** m * (y.imag if m < 0 else y.real)


def test_sh_irradiance_of_a_sphere_matches_numerical_integration():
    """Irradiance E(n) = integral over the hemisphere around n of L(w) (n.w) dw, for a radiance L with
    known SH coefficients, by Gauss-Legendre quadrature in cos(angle to n) and the trapezoid rule in
    azimuth, against `shade` on unit-sphere normals."""
    rng = np.random.default_rng(3)
    coeffs = rng.normal(size=(3, 9)) * np.array([1.0] + [0.5] * 3 + [0.3] * 5)
    lm = [(0, 0), (1, -1), (1, 0), (1, 1), (2, -2), (2, -1), (2, 0), (2, 1), (2, 2)]  # our basis order
    mu, mu_w = np.polynomial.legendre.leggauss(24)
    mu, mu_w = (mu + 1) / 2, mu_w / 2  # nodes on [0, 1]
    az = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    normals = rng.normal(size=(12, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    expected = []
    for n in normals:
        t1 = np.cross(n, [0.3, 0.5, 0.8])
        t1 /= np.linalg.norm(t1)
        t2 = np.cross(n, t1)
        s = np.sqrt(1 - mu ** 2)[:, None, None]
        w = s * (np.cos(az)[None, :, None] * t1 + np.sin(az)[None, :, None] * t2) + mu[:, None, None] * n
        theta, phi = np.arccos(np.clip(w[..., 2], -1, 1)), np.arctan2(w[..., 1], w[..., 0])
        radiance = np.stack([real_sh(l, m, theta, phi) for l, m in lm], -1) @ coeffs.T  # (M, A, 3)
        weight = (mu * mu_w)[:, None] * (2 * np.pi / len(az))
        expected.append(np.einsum("mac,ma->c", radiance, weight))
    ours = shade(torch.tensor(normals)[None], torch.tensor(coeffs)[None])[0].numpy()
    np.testing.assert_allclose(ours, np.stack(expected), atol=1e-9)
    # closed form: uniform unit radiance (Y00 coefficient sqrt(4 pi)) gives irradiance pi everywhere
    uniform = torch.zeros(1, 3, 9, dtype=torch.float64)
    uniform[..., 0] = math.sqrt(4 * math.pi)
    torch.testing.assert_close(shade(torch.tensor(normals)[None], uniform),
                               torch.full((1, 12, 3), math.pi, dtype=torch.float64))


def test_ambient_offset_lights_a_zero_code():
    sh = light_coefficients(torch.zeros(2, 27), ambient_offset=0.7)
    assert sh.shape == (2, 3, 9)
    assert torch.all(sh[..., 0] == 0.7) and torch.all(sh[..., 1:] == 0)


def test_solve_light_recovers_a_known_light_and_matches_lstsq():
    """Colours lit by a known light give that light back (the image formation is linear in it); with
    noise and a ridge the solve equals NumPy's least squares on the design matrix built here; an image
    with nothing visible gets the prior."""
    from mofa.decoder.lighting import solve_light

    g = torch.Generator().manual_seed(3)
    normals = torch.nn.functional.normalize(torch.randn(2, 400, 3, generator=g, dtype=torch.float64), dim=-1)
    reflectance = 0.3 + 0.6 * torch.rand(2, 400, 3, generator=g, dtype=torch.float64)
    sh = light_coefficients(0.3 * torch.randn(2, 27, generator=g, dtype=torch.float64))
    colours = reflectance * shade(normals, sh)
    weights = (torch.rand(2, 400, generator=g) > 0.3).double()
    torch.testing.assert_close(solve_light(normals, reflectance, colours, weights, ridge=0.0), sh)

    noisy = colours + 0.05 * torch.randn(colours.shape, generator=g, dtype=torch.float64)
    ridge = 0.01
    ours = solve_light(normals, reflectance, noisy, weights, ridge=ridge)
    x, y, z = normals.numpy().transpose(2, 0, 1)
    basis = np.stack([np.full_like(x, math.pi * 0.5 / math.sqrt(math.pi)),  # pi Y00
                      *(2 * math.pi / 3 * math.sqrt(3 / (4 * math.pi)) * c for c in (y, z, x)),
                      math.pi / 4 * 0.5 * math.sqrt(15 / math.pi) * x * y,
                      math.pi / 4 * 0.5 * math.sqrt(15 / math.pi) * y * z,
                      math.pi / 4 * 0.25 * math.sqrt(5 / math.pi) * (3 * z * z - 1),
                      math.pi / 4 * 0.5 * math.sqrt(15 / math.pi) * x * z,
                      math.pi / 4 * 0.25 * math.sqrt(15 / math.pi) * (x * x - y * y)], -1)  # (2, 400, 9)
    prior = np.zeros(9)
    prior[0] = 0.7
    for b in range(2):
        w = np.sqrt(weights[b].numpy())[:, None]
        lam = math.sqrt(ridge * weights[b].sum().item())
        for c in range(3):
            design = reflectance[b, :, c].numpy()[:, None] * basis[b]
            a = np.vstack([w * design, lam * np.eye(9)])
            rhs = np.concatenate([w[:, 0] * noisy[b, :, c].numpy(), lam * prior])
            np.testing.assert_allclose(ours[b, c].numpy(), np.linalg.lstsq(a, rhs, rcond=None)[0], atol=1e-9)

    nothing = solve_light(normals, reflectance, noisy, torch.zeros(2, 400, dtype=torch.float64), ridge=1e-3)
    torch.testing.assert_close(nothing, light_coefficients(torch.zeros(2, 27, dtype=torch.float64)))


def test_robust_light_discounts_outliers():
    """A quarter of the vertices see something else (background): plain least squares is pulled
    towards it, the IRLS l2,1 fit much less, and its l2,1 objective is lower."""
    from mofa.decoder.lighting import robust_light

    g = torch.Generator().manual_seed(4)
    normals = torch.nn.functional.normalize(torch.randn(1, 600, 3, generator=g, dtype=torch.float64), dim=-1)
    normals[..., 2] = -normals[..., 2].abs()  # a hemisphere facing the camera, as a face
    reflectance = 0.3 + 0.6 * torch.rand(1, 600, 3, generator=g, dtype=torch.float64)
    sh = light_coefficients(0.2 * torch.randn(1, 27, generator=g, dtype=torch.float64))
    observed = reflectance * shade(normals, sh)
    observed[:, :150] = torch.rand(1, 150, 3, generator=g, dtype=torch.float64)
    visible = torch.ones(1, 600, dtype=torch.bool)
    plain = robust_light(normals, reflectance, observed, visible, iterations=1)
    robust = robust_light(normals, reflectance, observed, visible, iterations=8)
    assert (robust - sh).abs().mean() < 0.3 * (plain - sh).abs().mean()
    l21 = lambda light: (observed - reflectance * shade(normals, light)).norm(dim=-1).sum()  # noqa: E731
    assert l21(robust) < l21(plain)
    with pytest.raises(ValueError, match="at least 1"):
        robust_light(normals, reflectance, observed, visible, iterations=0)


def test_vertex_normals_are_area_weighted():
    # Vertex 0 is shared by a big triangle in the z=0 plane and a small one in the x=0 plane.
    vertices = torch.tensor([[[0.0, 0, 0], [4, 0, 0], [0, 4, 0], [0, 0, -1], [0, 1, 0]]])
    triangles = torch.tensor([[0, 1, 2], [0, 3, 4]])
    n0 = vertex_normals(vertices, triangles)[0, 0]
    expected = torch.tensor([0.0, 0, 16]) + torch.tensor([1.0, 0, 0])  # twice the areas: 16 and 1
    torch.testing.assert_close(n0, expected / expected.norm())


def test_sphere_normals_are_radial(small_face_model):
    verts = torch.as_tensor(small_face_model.mean_shape, dtype=torch.float64)[None]
    normals = vertex_normals(verts, torch.as_tensor(small_face_model.triangles))
    radial = torch.nn.functional.normalize(verts, dim=-1)
    assert (normals * radial).sum(-1).min() > 0.99


def test_back_facing_vertices_are_invisible(small_face_model):
    decoder = Decoder(small_face_model, CAMERA)
    out = decoder(torch.zeros(1, decoder.code_size))
    towards_camera = -torch.nn.functional.normalize(out.vertices, dim=-1)
    cosine = (out.normals * towards_camera).sum(-1)[0]
    visible = out.visible[0]
    assert visible[cosine > 0.05].all() and not visible[cosine < -0.05].any()
    # closed form for a sphere of radius r at distance d: a point is front-facing iff its model-space
    # z (towards the camera) exceeds r^2 / d; vertex normals are nearly radial, so allow 3 mm
    z = torch.as_tensor(small_face_model.mean_shape[:, 2])
    limit = 75.0 ** 2 / CAMERA.distance_mm
    assert visible[z > limit + 3].all() and not visible[z < limit - 3].any()
    back = z < 0
    # turned around (yaw pi), the front hemisphere is hidden instead
    code = torch.zeros(1, decoder.code_size)
    code[0, decoder.layout.slices["rotation"]] = torch.tensor([0.0, math.pi, 0.0])
    turned = decoder(code).visible[0]
    assert not turned[~back & torch.as_tensor(small_face_model.mean_shape[:, 2] > 10)].any()


def test_zero_code_is_ambient_lit_mean_reflectance(small_face_model):
    decoder = Decoder(small_face_model, CAMERA)
    out = decoder(torch.zeros(1, decoder.code_size))
    ambient = 0.7 * 0.5 / math.sqrt(math.pi) * math.pi  # gamma_0 * Y00 * pi
    torch.testing.assert_close(out.colours[0], torch.as_tensor(small_face_model.mean_reflectance) * ambient)


def test_decoder_runs_on_cuda_when_present(small_face_model):
    """Same numbers on every available device (CPU always; CUDA where the machine has it)."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    for device in devices:
        decoder = Decoder(small_face_model, CAMERA).to(device)
        results.append(decoder(random_code(decoder, 3).to(device)).colours.cpu())
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], atol=1e-5, rtol=1e-5)
    assert results[0].dtype == torch.float32
