"""The ray-cast renderer against closed forms (plane depth, barycentric colour, z-buffer order) and
against the analytic decoder's per-vertex colours."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from mofa.decoder import Decoder, PinholeCamera
from mofa.render.raycast import Rendered, back_face_culled, render, render_batch, shaded_geometry_colours

CAMERA = PinholeCamera(image_size=64, focal_length_px=100.0)


def unproject(u: float, v: float, z: float, camera: PinholeCamera) -> np.ndarray:
    """Pixel (u column, v row) at depth z mm -> (3,) camera-space point."""
    c, f = camera.principal_point, camera.focal_length_px
    return np.array([(u - c) / f * z, (v - c) / f * z, z])


def test_plane_at_known_depth():
    # A square from pixel 10.3 to 40.6 in u and 15.2 to 50.7 in v, fronto-parallel at z = 500 mm.
    z = 500.0
    u0, u1, v0, v1 = 10.3, 40.6, 15.2, 50.7
    corners = np.stack([unproject(u0, v0, z, CAMERA), unproject(u1, v0, z, CAMERA),
                        unproject(u1, v1, z, CAMERA), unproject(u0, v1, z, CAMERA)])
    triangles = np.array([[0, 1, 2], [0, 2, 3]])
    out = render(corners, triangles, np.full((4, 3), 0.5), CAMERA)
    assert isinstance(out, Rendered)
    assert out.image.shape == (64, 64, 3) and out.image.dtype == np.float32
    assert out.mask.shape == (64, 64) and out.mask.dtype == bool
    assert out.depth.dtype == np.float32
    uu, vv = np.meshgrid(np.arange(64), np.arange(64))  # pixel centres at integer coordinates
    expected = (uu > u0) & (uu < u1) & (vv > v0) & (vv < v1)
    np.testing.assert_array_equal(out.mask, expected)
    np.testing.assert_allclose(out.depth[expected], z, atol=1e-3)
    assert np.isinf(out.depth[~expected]).all()
    np.testing.assert_allclose(out.image[expected], 0.5, atol=1e-6)
    assert (out.image[~expected] == 0.0).all()


def test_plane_supersampled_coverage():
    # Edges through pixel centres: with 4 x 4 sub-samples the edge pixels are exactly half covered.
    z = 300.0
    u0, u1, v0, v1 = 10.0, 30.0, 20.0, 40.0
    corners = np.stack([unproject(u0, v0, z, CAMERA), unproject(u1, v0, z, CAMERA),
                        unproject(u1, v1, z, CAMERA), unproject(u0, v1, z, CAMERA)])
    background = np.full((64, 64, 3), 0.2, dtype=np.float32)
    out = render(corners, np.array([[0, 1, 2], [0, 2, 3]]), np.full((4, 3), 1.0), CAMERA,
                 background=background, supersample=4)
    np.testing.assert_allclose(out.image[30, 20], 1.0, atol=1e-6)  # interior
    np.testing.assert_allclose(out.image[30, 10], 0.6, atol=1e-6)  # left edge: half covered
    np.testing.assert_allclose(out.image[20, 10], 0.4, atol=1e-6)  # corner: a quarter covered
    np.testing.assert_allclose(out.image[30, 5], 0.2, atol=1e-6)  # background
    assert out.mask[30, 20] and not out.mask[30, 10] and not out.mask[20, 10]
    np.testing.assert_allclose(out.depth[out.mask], z, atol=1e-3)


def test_colour_interpolation_is_barycentric():
    # A slanted triangle with red, green, blue corners; a point with barycentrics (0.2, 0.3, 0.5)
    # projected to the centre of pixel (20, 30) must show that colour mix.
    a, b, c = unproject(4, 3, 400, CAMERA), unproject(60, 10, 520, CAMERA), unproject(12, 62, 460, CAMERA)
    weights = np.array([0.2, 0.3, 0.5])
    point = weights @ np.stack([a, b, c])
    # Slide the triangle along the ray so the point sits exactly on pixel (u, v) = (20, 30).
    target = unproject(20, 30, point[2], CAMERA)
    vertices = np.stack([a, b, c]) + (target - point)
    colours = np.eye(3)
    out = render(torch.as_tensor(vertices), np.array([[0, 1, 2]]), colours, CAMERA)
    np.testing.assert_allclose(out.image[30, 20], weights, atol=1e-4)
    np.testing.assert_allclose(out.depth[30, 20], target[2], rtol=1e-5)


def test_zbuffer_nearer_triangle_wins():
    near = np.stack([unproject(5, 5, 300, CAMERA), unproject(40, 5, 300, CAMERA), unproject(5, 40, 300, CAMERA)])
    far = np.stack([unproject(20, 20, 600, CAMERA), unproject(60, 20, 600, CAMERA), unproject(20, 60, 600, CAMERA)])
    vertices = np.concatenate([far, near])  # far first: order in the buffers must not matter
    triangles = np.array([[0, 1, 2], [3, 4, 5]])
    colours = np.array([[0, 0, 1]] * 3 + [[1, 0, 0]] * 3, dtype=np.float32)
    out = render(vertices, triangles, colours, CAMERA)
    np.testing.assert_allclose(out.image[22, 22], [1, 0, 0])  # overlap: the near (red) one
    np.testing.assert_allclose(out.depth[22, 22], 300, atol=1e-3)
    np.testing.assert_allclose(out.image[25, 45], [0, 0, 1])  # far one alone
    np.testing.assert_allclose(out.depth[25, 45], 600, atol=1e-3)


def test_shaded_geometry_colours():
    normals = np.array([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0]])  # facing the camera, facing away
    grey = shaded_geometry_colours(normals)
    assert grey.shape == (2, 3) and (grey[:, 0] == grey[:, 1]).all()
    assert grey[0, 0] > 0.8 and grey[1, 0] == pytest.approx(0.2)
    np.testing.assert_allclose(shaded_geometry_colours(torch.as_tensor(normals)).numpy(), grey)


def one_ring_triangles(triangles: np.ndarray, n_vertices: int) -> list[set[int]]:
    """For each vertex, the set of triangle indices that use it."""
    ring: list[set[int]] = [set() for _ in range(n_vertices)]
    for t, corners in enumerate(triangles):
        for i in corners:
            ring[i].add(t)
    return ring


def triangle_hit_through(pixels: np.ndarray, vertices: np.ndarray, triangles: np.ndarray,
                         camera: PinholeCamera) -> np.ndarray:
    """(M, 2) integer pixels -> (M,) index of the first triangle hit through each pixel centre
    (a separate Open3D query, independent of the renderer's code path)."""
    import open3d as o3d
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(triangles.astype(np.uint32)))
    rays = np.zeros((len(pixels), 6), dtype=np.float32)
    rays[:, 3:5] = (pixels - camera.principal_point) / camera.focal_length_px
    rays[:, 5] = 1.0
    return scene.cast_rays(o3d.core.Tensor(rays))["primitive_ids"].numpy().astype(np.int64)


def check_render_matches_decoder(model, camera: PinholeCamera, code: torch.Tensor) -> dict[str, float]:
    """Decode, render, and compare the rendered colour at each vertex's nearest pixel centre with the
    decoder's colour, over vertices that are front-facing, at least 1 px inside the mask and not
    occluded (the pixel's ray hits one of the vertex's own triangles; rendered depth within 3 mm).

    Tolerance: the pixel lies up to 0.71 px from the vertex, inside one of its triangles, so its colour
    is a convex mix of that triangle's corner colours: per vertex and channel the difference is at
    most the spread of colours over the vertex's one ring (+1e-4), and the mean difference <= 0.03.
    Outside the mask the background is untouched.
    """
    decoder = Decoder(model, camera)
    with torch.no_grad():
        decoded = decoder(code)
    size = camera.image_size
    background = np.random.default_rng(1).uniform(size=(len(code), size, size, 3)).astype(np.float32)
    images = render_batch(decoded, model.triangles, camera, backgrounds=background)
    ring = one_ring_triangles(model.triangles, model.n_vertices)
    diffs, bounds = [], []
    for b, out in enumerate(images):
        outside = ~out.mask
        np.testing.assert_array_equal(out.image[outside], background[b][outside])
        # Pixels at least 1 px inside the mask: the pixel and its 8 neighbours are covered.
        padded = np.pad(out.mask, 1)
        interior = np.ones_like(out.mask)
        for dv in (0, 1, 2):
            for du in (0, 1, 2):
                interior &= padded[dv:dv + size, du:du + size]
        vertices, colours = decoded.vertices[b].numpy(), decoded.colours[b].numpy()
        pixel = decoded.screen[b].numpy().round().astype(np.int64)
        idx = np.flatnonzero(((pixel >= 0) & (pixel < size)).all(1) & decoded.visible[b].numpy())
        u, v = pixel[idx, 0], pixel[idx, 1]
        keep = interior[v, u] & (np.abs(out.depth[v, u] - vertices[idx, 2]) < 3.0)
        idx, u, v = idx[keep], u[keep], v[keep]
        hit = triangle_hit_through(pixel[idx], vertices, model.triangles, camera)
        own = np.array([h in ring[i] for h, i in zip(hit, idx)], dtype=bool)
        idx, u, v = idx[own], u[own], v[own]
        corner_colours = colours[model.triangles]  # (T, 3, 3)
        spread = np.stack([np.abs(corner_colours[list(ring[i])] - colours[i]).max((0, 1)) for i in idx])
        diffs.append(np.abs(out.image[v, u] - colours[idx]))
        bounds.append(spread)
    diff, bound = np.concatenate(diffs), np.concatenate(bounds)
    stats = {"compared": len(diff), "mean": float(diff.mean()), "max": float(diff.max()),
             "worst_excess": float((diff - bound).max())}
    assert stats["compared"] > 50, stats
    assert (diff <= bound + 1e-4).all(), stats
    assert stats["mean"] <= 0.03, stats
    return stats


def random_code(decoder_layout, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    sizes = decoder_layout.sizes
    light = torch.zeros(batch, sizes["light"])
    light[:, 1:4] = 0.3 * torch.randn(batch, 3, generator=g)  # band-1 red light: visible shading gradients
    light[:, 10:13] = light[:, 1:4]
    light[:, 19:22] = light[:, 1:4]
    return decoder_layout.join(
        shape=torch.randn(batch, sizes["shape"], generator=g),
        expression=torch.randn(batch, sizes["expression"], generator=g),
        reflectance=torch.randn(batch, sizes["reflectance"], generator=g),
        rotation=0.3 * (torch.rand(batch, 3, generator=g) - 0.5),
        translation=torch.randn(batch, 3, generator=g),
        light=light,
    )


def test_back_face_culling_keeps_each_hit_its_own_colours(small_face_model):
    """On a closed surface culling removes only hidden triangles: the image must not change (the hit
    ids then index the culled triangle list, not the full one)."""
    camera = PinholeCamera(image_size=96, focal_length_px=500.0)
    decoder = Decoder(small_face_model, camera)
    with torch.no_grad():
        decoded = decoder(random_code(decoder.layout, 1, seed=3))
    vertices, colours = decoded.vertices[0].numpy(), decoded.colours[0].clamp(0, 1).numpy()
    full = render(vertices, small_face_model.triangles, colours, camera)
    culled = render(vertices, small_face_model.triangles, colours, camera, cull_back_faces=True)
    np.testing.assert_array_equal(culled.mask, full.mask)
    np.testing.assert_allclose(culled.image, full.image, atol=1e-5)


def test_render_matches_decoder_on_small_model(small_face_model):
    camera = PinholeCamera(image_size=96, focal_length_px=500.0)
    layout = Decoder(small_face_model, camera).layout
    check_render_matches_decoder(small_face_model, camera, random_code(layout, 3, seed=0))


def test_render_matches_decoder_on_ict_narrow_face(ict_model):
    narrow = ict_model.submesh("narrow_face").truncated(4, 0, 4)
    camera = PinholeCamera()
    layout = Decoder(narrow, camera).layout
    check_render_matches_decoder(narrow, camera, random_code(layout, 2, seed=0))


def test_bench_rows_and_table(small_face_model):
    from mofa.bench import bench_decoder, bench_renderer, format_rows
    camera = PinholeCamera(image_size=64, focal_length_px=320.0)
    rows = bench_decoder(small_face_model, camera, "cpu", batch_sizes=(2,), repeats=2, warmup=1)
    rows += [bench_renderer(small_face_model, camera, n_images=3, supersample=s) for s in (1, 2)]
    assert [r["bench"] for r in rows] == ["decoder+photometric", "render", "render"]
    assert all(r["images_per_s"] > 0 for r in rows)
    table = format_rows(rows)
    assert "forward_backward_ms" in table and "supersample" in table and len(table.splitlines()) == 5


def test_face_model_card_png(small_face_model, tmp_path):
    from mofa.figures.face_model_card import plot_face_model_card
    out = plot_face_model_card(small_face_model, PinholeCamera(image_size=64, focal_length_px=320.0),
                               tmp_path / "figs" / "card.png", supersample=1)
    assert out == tmp_path / "figs" / "card.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["card.png"]  # no temporary file left


def test_train_and_infer_bench_rows(small_face_model):
    from mofa.bench import bench_infer, bench_train
    camera = PinholeCamera(image_size=64, focal_length_px=320.0)
    train = bench_train(small_face_model, camera, encoders=("alexnet",), batch_sizes=(1, 2), input_size=64,
                        repeats=1, warmup=0)
    infer = bench_infer(small_face_model, camera, encoders=("alexnet",), batch_sizes=(2,), input_size=64,
                        repeats=1, warmup=0)
    assert [(r["encoder"], r["batch"]) for r in train] == [("alexnet", 1), ("alexnet", 2)]
    for r in train:
        assert r["images_per_s"] > 0 and 0 < r["decoder_loss_share"] < 1
    assert infer[0]["ms_per_image"] > 0


def test_back_face_culling_changes_no_pixel(small_face_model):
    """On a closed surface the nearest hit is never a back face: culled and full renders agree exactly,
    colours included (the culled triangle list must index the colours too)."""
    camera = PinholeCamera(image_size=96, focal_length_px=500.0)
    decoder = Decoder(small_face_model, camera)
    out = decoder(random_code(decoder.layout, 1, seed=3))
    colours = torch.rand(out.vertices.shape[1], 3, generator=torch.Generator().manual_seed(0))
    full = render(out.vertices[0], small_face_model.triangles, colours, camera)
    culled = render(out.vertices[0], small_face_model.triangles, colours, camera, cull_back_faces=True)
    assert full.mask.sum() > 500
    np.testing.assert_array_equal(full.mask, culled.mask)
    np.testing.assert_allclose(full.image, culled.image, atol=1e-6)
    np.testing.assert_allclose(full.depth[full.mask], culled.depth[full.mask], atol=1e-4)


def test_back_face_culled_keeps_the_triangles_facing_the_camera(small_face_model):
    """The kept triangles, in their order, are those whose counter-clockwise normal points towards the
    camera, as np.cross and einsum say in float64."""
    camera = PinholeCamera(image_size=96, focal_length_px=500.0)
    decoder = Decoder(small_face_model, camera)
    with torch.no_grad():
        vertices = decoder(random_code(decoder.layout, 1, seed=5)).vertices[0].numpy()
    triangles = small_face_model.triangles
    a, b, c = (vertices[triangles[:, k]].astype(np.float64) for k in range(3))
    towards = np.einsum("ij,ij->i", np.cross(b - a, c - a), a + b + c) < 0
    assert 0.3 < towards.mean() < 0.7
    np.testing.assert_array_equal(back_face_culled(vertices, triangles), triangles[towards])
