"""A z-buffer image renderer: one ray per pixel (or sub-pixel) through the pinhole, cast with Open3D.

Camera conventions are those of `mofa.decoder.camera`: camera space x right, y down, z forward, the
camera at the origin; the centre of pixel (u, v) = (column, row) lies at integer coordinates. The ray of
pixel (u, v) has direction ((u - c) / f, (v - c) / f, 1), so the hit distance along it is the depth z.

Open3D's `primitive_uvs` are barycentric coordinates (u, v) of the hit in its triangle (a, b, c):
point = (1 - u - v) a + u b + v c (Embree's convention; checked in tests/test_render.py).
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import open3d as o3d
import torch

from mofa.decoder.camera import PinholeCamera

# Light for "shaded geometry" figures: from the camera's side, a little above and to the left.
_FIGURE_LIGHT = np.array([-0.3, -0.4, -1.0]) / np.linalg.norm([-0.3, -0.4, -1.0])


@dataclasses.dataclass(frozen=True)
class Rendered:
    """One rendered image of H x W pixels.

    image: (H, W, 3) float32 linear RGB in [0, 1], composited over the background;
    mask: (H, W) bool, pixel covered by the mesh (more than half its sub-samples with supersampling);
    depth: (H, W) float32 camera-space z in mm of the nearest covered sample, inf outside the mask.
    """
    image: np.ndarray
    mask: np.ndarray
    depth: np.ndarray


def _as_numpy(array, dtype) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    return np.ascontiguousarray(array, dtype=dtype)


@functools.lru_cache(maxsize=16)
def _pixel_rays(image_size: int, focal_length_px: float, principal_point: float, supersample: int) -> np.ndarray:
    """(H * s, W * s, 6) float32 rays from the camera centre, grouped so that pixel (v, u)'s s x s
    sub-samples are rows v*s..v*s+s-1, columns u*s..u*s+s-1; direction z = 1, so t_hit is depth."""
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5  # sub-sample centres within the pixel
    coords = (np.arange(image_size)[:, None] + offsets[None, :]).reshape(-1)  # (H * s,)
    d = (coords - principal_point) / focal_length_px
    rays = np.zeros((len(coords), len(coords), 6), dtype=np.float32)
    rays[..., 3] = d[None, :]  # x from the column
    rays[..., 4] = d[:, None]  # y from the row
    rays[..., 5] = 1.0
    rays.setflags(write=False)
    return rays


def _cast(vertices: np.ndarray, triangles: np.ndarray, rays: np.ndarray, threads: int = 0) -> dict[str, np.ndarray]:
    """vertices (N, 3) float32, triangles (T, 3) uint32, rays (..., 6) float32 -> Open3D's t_hit (...),
    primitive_ids (...) and primitive_uvs (..., 2), using `threads` threads (0: all cores)."""
    scene = o3d.t.geometry.RaycastingScene(nthreads=threads)
    scene.add_triangles(o3d.core.Tensor.from_numpy(vertices), o3d.core.Tensor.from_numpy(triangles))
    hits = scene.cast_rays(o3d.core.Tensor.from_numpy(rays), nthreads=threads)
    return {k: hits[k].numpy() for k in ("t_hit", "primitive_ids", "primitive_uvs")}


def back_face_culled(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """vertices (N, 3) float32 camera space, triangles (T, 3) int -> the triangles (T', 3), in their
    order, whose front (counter-clockwise) side faces the camera at the origin.

    For an opaque closed surface the nearest hit is never a back face, so culling changes nothing but
    the cost; through a hole in an open mesh the background shows instead of the inside, which is what
    the decoder's front-facing visibility assumes too. Facing: (b - a) x (c - a) . (a + b + c) < 0 in
    float32, worked on (3, T) coordinate rows (contiguous loops, ~2x faster than np.cross and einsum
    over (T, 3), with the same roundings in the same order)."""
    rows = np.ascontiguousarray(vertices.T)  # (3, N)
    a, b, c = (np.take(rows, triangles[:, k], axis=1) for k in range(3))  # (3, T) each
    e1, e2 = b - a, c - a
    normal = (e1[1] * e2[2] - e1[2] * e2[1], e1[2] * e2[0] - e1[0] * e2[2], e1[0] * e2[1] - e1[1] * e2[0])
    centre = a + b + c  # three times the centroid
    facing = normal[0] * centre[0] + normal[1] * centre[1] + normal[2] * centre[2] < 0
    return np.take(triangles, np.flatnonzero(facing), axis=0)


def render(vertices, triangles, colours, camera: PinholeCamera, background=None,
           supersample: int = 1, cull_back_faces: bool = False, threads: int = 0) -> Rendered:
    """Ray-cast a triangle mesh with per-vertex colours through the pinhole camera.

    vertices: (N, 3) camera space, mm (numpy or torch; detached); triangles: (T, 3) int;
    colours: (N, 3) linear RGB; background: (H, W, 3) in [0, 1] or None (black);
    supersample: s casts s x s rays per pixel and averages them (anti-aliased edges);
    cull_back_faces: drop triangles facing away from the camera first (faster; see back_face_culled);
    threads: Open3D's threads (0: all cores; 1 where the caller renders several images in parallel).
    Colours are interpolated barycentrically inside the nearest triangle hit; returns Rendered.
    """
    size, s = camera.image_size, int(supersample)
    if s < 1:
        raise ValueError(f"supersample must be a positive integer, got {supersample}")
    verts = _as_numpy(vertices, np.float32)
    corner_index = _as_numpy(triangles, np.intp)  # numpy gathers fastest with intp indices
    cols = _as_numpy(colours, np.float32)
    if verts.ndim != 2 or verts.shape[1] != 3 or cols.shape != verts.shape:
        raise ValueError(f"vertices {verts.shape} and colours {cols.shape} must both be (N, 3)")
    if cull_back_faces:
        corner_index = back_face_culled(verts, corner_index)  # the hits' primitive ids index the culled list
    tris = corner_index.astype(np.uint32)  # what Open3D takes
    if background is None:
        bg = np.zeros((size, size, 3), dtype=np.float32)
    else:
        bg = _as_numpy(background, np.float32)
        if bg.shape != (size, size, 3):
            raise ValueError(f"background is {bg.shape}, the camera needs ({size}, {size}, 3)")
    rays = _pixel_rays(size, float(camera.focal_length_px), float(camera.principal_point), s)

    # Only rays inside the mesh's projected bounding box (+1 px) can hit it: cast those alone.
    full = size * s
    in_front = verts[:, 2] > 1e-6
    if len(tris) == 0 or not in_front.any():
        return Rendered(bg.copy(), np.zeros((size, size), bool), np.full((size, size), np.inf, np.float32))
    if in_front.all():
        # u and v apart: min / max over a contiguous axis are ~5x faster than over axis 0 of (N, 2)
        u, v = (camera.focal_length_px * verts[:, k] / verts[:, 2] + camera.principal_point for k in (0, 1))
        lo = np.clip(np.floor([u.min(), v.min()]) - 1, 0, size - 1).astype(int) * s
        hi = (np.clip(np.ceil([u.max(), v.max()]) + 1, 0, size - 1).astype(int) + 1) * s
    else:  # some vertices behind the camera: the projection is unbounded, cast every ray
        lo, hi = np.array([0, 0]), np.array([full, full])
    box = (slice(lo[1], hi[1]), slice(lo[0], hi[0]))  # rows from v, columns from u
    hits = _cast(verts, tris, np.ascontiguousarray(rays[box]), threads)

    t_box = hits["t_hit"]
    hit_box = np.isfinite(t_box)
    hit_rays = np.flatnonzero(hit_box)
    uv = np.take(hits["primitive_uvs"].reshape(-1, 2), hit_rays, axis=0)
    weights = np.empty((len(hit_rays), 1, 3), dtype=np.float32)  # (1 - u - v, u, v) for corners a, b, c
    weights[:, 0, 1:] = uv
    weights[:, 0, 0] = 1.0 - uv[:, 0] - uv[:, 1]
    corners = np.take(corner_index, np.take(hits["primitive_ids"].reshape(-1), hit_rays), axis=0)  # (M, 3)
    colour_hit = np.matmul(weights, np.take(cols, corners, axis=0))[:, 0]  # (M, 3)

    depth_full = np.full((full, full), np.inf, dtype=np.float32)
    depth_full[box] = t_box
    if s == 1:
        image = bg.copy()
        inside = bg[box].copy()  # contiguous, so that the hit rays index its pixels (faster than a mask)
        inside.reshape(-1, 3)[hit_rays] = colour_hit
        image[box] = inside
        return Rendered(image, np.isfinite(depth_full), depth_full)

    colour_full = np.zeros((full, full, 3), dtype=np.float32)
    colour_full[box][hit_box] = colour_hit
    coverage = _pool(np.isfinite(depth_full).astype(np.float32), s, np.add) / (s * s)  # (H, W)
    # Colour of the covered part, blended with the background by coverage = the plain sub-sample mean.
    image = _pool(colour_full, s, np.add) / (s * s) + (1.0 - coverage)[..., None] * bg
    mask = coverage > 0.5
    depth = _pool(depth_full, s, np.minimum)
    depth[~mask] = np.inf
    return Rendered(image.astype(np.float32), mask, depth)


def _pool(samples: np.ndarray, s: int, combine: np.ufunc) -> np.ndarray:
    """(H * s, W * s, ...) -> (H, W, ...): each pixel's s x s sub-samples combined with a ufunc
    (strided slices: much faster than a reduction over a reshaped view)."""
    out = samples[0::s, 0::s].copy()
    for i in range(s):
        for j in range(s):
            if i or j:
                combine(out, samples[i::s, j::s], out=out)
    return out


def render_batch(decoded, triangles, camera: PinholeCamera, backgrounds=None,
                 supersample: int = 1) -> list[Rendered]:
    """Render every face of a DecodedFace batch with its decoder colours.

    decoded: DecodedFace with vertices (B, N, 3) mm and colours (B, N, 3); triangles: (T, 3);
    backgrounds: (B, H, W, 3) in [0, 1] or None (black). Returns B Rendered images.
    """
    vertices = _as_numpy(decoded.vertices, np.float32)
    colours = _as_numpy(decoded.colours, np.float32)
    tris = _as_numpy(triangles, np.intp)
    if backgrounds is not None:
        backgrounds = _as_numpy(backgrounds, np.float32)
        if len(backgrounds) != len(vertices):
            raise ValueError(f"{len(backgrounds)} backgrounds for {len(vertices)} faces")
    return [render(vertices[b], tris, colours[b], camera,
                   None if backgrounds is None else backgrounds[b], supersample)
            for b in range(len(vertices))]


def shaded_geometry_colours(normals):
    """Grey Lambertian shading of unit normals for "shaded geometry" figures.

    normals: (..., 3) unit vectors in camera space (numpy or torch) -> (..., 3) grey in [0, 1]
    (same type): 0.2 ambient + 0.75 diffuse from a light behind the camera, above and to the left.
    """
    if isinstance(normals, torch.Tensor):
        light = torch.as_tensor(_FIGURE_LIGHT, dtype=normals.dtype, device=normals.device)
        grey = 0.2 + 0.75 * (normals @ light).clamp(min=0.0)
        return grey[..., None].expand(*grey.shape, 3).clone()
    normals = np.asarray(normals)
    grey = 0.2 + 0.75 * np.clip(normals @ _FIGURE_LIGHT.astype(normals.dtype), 0.0, None)
    return np.repeat(grey[..., None], 3, axis=-1)
