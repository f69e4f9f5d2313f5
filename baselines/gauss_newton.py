"""The optimisation baseline (paper Sec. 7, "Comparison to Garrido et al.", Figs. 7 and 14): the coarse
layer of Garrido et al. re-implemented as the paper did, i.e. the MoFA energy

    E(x) = w_photo E_photo + w_land E_land + w_reg E_reg        (mofa.losses, same normalisations)

minimised over the whole code x of one image, from the zero code (the mean face, frontal, ambient-lit),
by 50 Gauss-Newton steps with Levenberg-Marquardt damping.

Least-squares form. Near a linearisation point x0, E is replaced by sum_m r_m(x)^2 (+ a constant) with
the residual vector, per image,
  - photometric: s_i (I(u_i) - c_i) for every vertex i in the visible set V (mofa.losses.visible_vertices),
    0 elsewhere, s_i = sqrt(w_photo / (2 n_norm max(rho_i, eps))), rho_i = ||I(u_i) - c_i|| at x0; n_norm
    is the face-region vertex count ("fixed") or |V| ("visible"), as LossWeights.photo_normalise says;
  - landmarks: sqrt(w_land conf_j) (u_{k_j} - s_j) / image size, for the 46 points of mofa.landmarks;
  - regulariser: sqrt(w_reg) (alpha, sqrt(w_delta) delta, sqrt(w_beta) beta), 0 for pose and light.
The robust l2,1 term is handled by iteratively reweighted least squares in its majorise-minimise form:
||r|| <= ||r||^2 / (2 rho) + rho / 2, with equality and equal gradients at ||r|| = rho. Hence the
factor 2: the sum of squares plus w_photo E_photo(x0) / 2 touches E at x0 with the same gradient
(2 J^T r = grad E, tested), and for a fixed visible set any x that lowers the squares lowers E. (The weight 1 / rho without
the 2 matches E's value at x0 but doubles the photometric gradient against the other terms, so the
Gauss-Newton fixed point is not a stationary point of E.) V and the weights are constants of one
linearisation. Every step is judged on the true energy (`energy`, which is mofa.losses.mofa_loss): a
step is kept only if E falls, so the history is monotone.

Jacobians, split at the mesh (`_vertex_rows`): per-vertex derivatives of `shade_and_project` in closed
form (`local_derivatives`: the pinhole projection's, the SH basis' (`sh_basis_jacobian`), the pose's
chained from those two; the colour is linear in albedo and light, whose derivatives are written out), chained with the bases (d vertices / d shape, expression; d albedo /
d reflectance) and with d normals / d (shape, expression), the analytic derivative of the area-weighted
normals over each vertex's one ring (`mesh_jacobian`; the basis gathered over the rings once per fit,
`one_ring`). Each pass covers the whole batch: image b's outputs depend on code b only, so one shared
tangent gives every image its own derivative. The photometric rows are formed directly (the image
gradient and the IRLS weights folded into the per-vertex factors), the landmark rows from the landmark
vertices alone (`screen_jacobian`), so with w_photo = 0 (landmarks alone, E4's oracle) a step costs
little. Bilinear sampling has no forward-mode rule in PyTorch, so dI/du (3 x 2 per vertex) comes from
reverse mode through the same `mofa.losses.sample_image` the loss uses. `jacobian="jacfwd"` is the
reference: torch.func for every piece (9 and 33 tangents, and one jvp of `vertex_normals` per basis
vector), the same numbers to rounding (tests/test_baselines.py) and several times slower per
linearisation at the default preset; `jacobian="jacrev"` the same pieces in reverse mode, slower still.

In float32 a 50-step fit is sensitive to rounding: accept/reject decisions flip and the final codes of
the same fit can differ by several percent (at energies within ~1 %), e.g. between 1 and 2 CPU threads;
in float64 the analytic and reference Jacobians give the same fit.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from typing import Literal, get_args

import numpy as np
import torch
from torch.func import jacrev, jvp, vmap

from mofa.decoder.camera import camera_rotation, project
from mofa.decoder.decoder import lit, to_camera
from mofa.decoder.geometry import linear_combination, vertex_normals
from mofa.decoder.lighting import light_coefficients, sh_basis, shade
from mofa.landmarks import LANDMARKS_46, N_LANDMARKS
from mofa.losses import LossWeights, mofa_loss, sample_image, visible_vertices

IRLS_EPS = 1e-3  # colour distance below which a vertex's robust weight stops growing
DAMPING_RANGE = (1e-9, 1e9)  # lambda stays inside; the update is Nielsen's (see `fit`)
JACREV_CHUNK = 1024  # cotangents per reverse-mode chunk (memory bound)

JacobianMode = Literal["analytic", "jacfwd", "jacrev"]


@dataclasses.dataclass
class FitResult:
    """codes: (B, D) fitted codes; energy_history: (B, steps + 1) E before the first step and after each
    (non-increasing); seconds_per_image: wall time of the whole fit / B; accepted: (B,) accepted steps;
    damping: (B,) final Levenberg-Marquardt lambda."""
    codes: torch.Tensor
    energy_history: torch.Tensor
    seconds_per_image: float
    accepted: torch.Tensor
    damping: torch.Tensor


@dataclasses.dataclass
class LandmarkTargets:
    """The 46 landmark constraints of a batch: vertex (46,) int64 indices into the decoder's vertices;
    points (B, 46, 2) px; weights (B, 46) = w_land * conf_j (conf 1 when none were given)."""
    vertex: torch.Tensor
    points: torch.Tensor
    weights: torch.Tensor


# -- the terms --------------------------------------------------------------------------------------

def landmark_targets(decoder, landmarks: torch.Tensor | None, confidences: torch.Tensor | None,
                     weights: LossWeights) -> LandmarkTargets | None:
    """landmarks: (B, 68, 2) px in the iBUG order or None; confidences: (B, 68) or None
    -> the 46-point constraints, or None when there are none (no landmarks, or w_land = 0)."""
    if landmarks is None:
        if weights.land > 0:
            raise ValueError(f"the landmark weight is {weights.land} but no landmarks were given: pass "
                             "landmarks or set the loss weight 'land' to 0")
        return None
    if landmarks.shape[-2:] != (N_LANDMARKS, 2):
        raise ValueError(f"landmarks must be (B, 68, 2) px in the iBUG order, got {tuple(landmarks.shape)}")
    if weights.land == 0:
        return None
    subset = list(LANDMARKS_46)
    points = landmarks[:, subset]
    conf = torch.ones(points.shape[:2], dtype=points.dtype, device=points.device) if confidences is None \
        else confidences[:, subset].to(points)
    return LandmarkTargets(decoder.landmarks[subset], points, weights.land * conf)


def regulariser_scale(layout, weights: LossWeights, like: torch.Tensor) -> torch.Tensor:
    """(D,) s with sum (s * x)^2 = w_reg E_reg(x): sqrt(w_reg) on shape, sqrt(w_reg w_delta) on
    expression, sqrt(w_reg w_beta) on reflectance, 0 on pose and light. dtype/device of `like`."""
    scale = like.new_zeros(layout.size)
    slices = layout.slices
    scale[slices["shape"]] = weights.reg ** 0.5
    scale[slices["expression"]] = (weights.reg * weights.expression) ** 0.5
    scale[slices["reflectance"]] = (weights.reg * weights.reflectance) ** 0.5
    return scale


def energy(decoder, codes: torch.Tensor, images: torch.Tensor, landmarks: torch.Tensor | None,
           confidences: torch.Tensor | None, weights: LossWeights) -> torch.Tensor:
    """E per image, (B,): exactly w_photo E_photo + w_land E_land + w_reg E_reg of mofa.losses."""
    with torch.no_grad():
        terms = mofa_loss(decoder, codes, images, landmarks if weights.land > 0 else None, confidences, weights)
    total = weights.photo * terms.photometric + weights.reg * terms.regulariser
    if terms.landmark is not None:
        total = total + weights.land * terms.landmark
    return total


def photometric_scale(decoder, codes: torch.Tensor, images: torch.Tensor, weights: LossWeights,
                      eps: float = IRLS_EPS, decoded=None) -> torch.Tensor | None:
    """(B, N) per-vertex factor s_i of the photometric residual at the linearisation point `codes`:
    sqrt(w_photo / (2 n_norm max(||I(u_i) - c_i||, eps))) on the visible set V, 0 elsewhere (the factor 2:
    see the module docstring); None when w_photo = 0 (no photometric residuals). decoded: decoder(codes)
    when the caller has it already."""
    if weights.photo == 0:
        return None
    height, width = images.shape[-2:]
    with torch.no_grad():
        decoded = decoder(codes) if decoded is None else decoded
        visible = visible_vertices(decoded, decoder.face_mask, height, width)
        norm = (sample_image(images, decoded.screen) - decoded.colours).norm(dim=-1)
        if weights.photo_normalise == "fixed":
            count = torch.full_like(norm[:, 0], max(int(decoder.face_mask.sum()), 1))
        else:
            count = visible.sum(-1).clamp_min(1).to(norm)
        scale = (weights.photo / (2 * count[:, None] * norm.clamp_min(eps))).sqrt()
        return torch.where(visible, scale, torch.zeros_like(scale))


def residuals(decoder, codes: torch.Tensor, images: torch.Tensor, photo_scale: torch.Tensor | None,
              targets: LandmarkTargets | None, reg_scale: torch.Tensor, decoded=None) -> torch.Tensor:
    """The residual vector r(x) with frozen IRLS weights and visible set, (B, M):
    M = 3 N (photometric, vertex-major, if photo_scale is given) + 2 * 46 (landmarks, if any) + D (regulariser).

    codes: (B, D); images: (B, 3, H, W); photo_scale: (B, N) from `photometric_scale`, or None;
    targets: from `landmark_targets`; reg_scale: (D,) from `regulariser_scale`; decoded: decoder(codes)
    when the caller has it already.
    """
    decoded = decoder(codes) if decoded is None else decoded
    parts = []
    if photo_scale is not None:
        parts.append((photo_scale[..., None] * (sample_image(images, decoded.screen) - decoded.colours)).flatten(1))
    if targets is not None:
        size = decoded.screen.new_tensor([images.shape[-1], images.shape[-2]])  # (width, height)
        offset = (decoded.screen[:, targets.vertex] - targets.points) / size
        parts.append((targets.weights.sqrt()[..., None] * offset).flatten(1))
    parts.append(reg_scale * codes)
    return torch.cat(parts, 1)


def image_gradient(images: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """dI/du of bilinear sampling (mofa.losses.sample_image) at each point: images (B, C, H, W),
    points (B, N, 2) px -> (B, N, C, 2), d(channel)/d(u, v)."""
    with torch.enable_grad():
        points = points.detach().requires_grad_(True)
        sampled = sample_image(images.detach(), points)  # each output depends on its own point only
        rows = [torch.autograd.grad(sampled[..., c].sum(), points, retain_graph=c + 1 < sampled.shape[-1])[0]
                for c in range(sampled.shape[-1])]
    return torch.stack(rows, -2)


def shade_and_project(decoder, model_vertices: torch.Tensor, model_normals: torch.Tensor, albedo: torch.Tensor,
                      rotation: torch.Tensor, translation: torch.Tensor,
                      light: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-vertex half of the decoder: screen (B, N, 2) px and colours (B, N, 3) from model-space
    vertices (B, N, 3) mm, their unit normals (B, N, 3), albedo (B, N, 3) and the pose and light parts
    of the code: the decoder's own steps (`mofa.decoder.decoder.to_camera`, `lit`, `project`), as
    `Decoder.forward` runs them after the mesh (tests/test_baselines.py checks that the two agree);
    vertex i's outputs depend on vertex i's inputs only, which is what makes its Jacobian cheap."""
    vertices, normals = to_camera(model_vertices, model_normals, rotation, translation, decoder.camera)
    return project(vertices, decoder.camera), lit(albedo, normals, light, decoder.ambient_offset)[0]


def _along(function, primal: torch.Tensor, directions: torch.Tensor, mode: JacobianMode, chunk_size):
    """Directional derivatives of function (tensor -> tensor or tuple) at primal (B, ...) along each
    of K directions (K, ...) shared by all images -> outputs with a trailing K axis.

    Image b's outputs depend on primal[b] only, so moving every image along the same direction gives
    each image's own derivative: one pass for the batch. jacfwd: K forward-mode tangents (vmap of jvp);
    jacrev: reverse mode over the K coordinates of an offset along the directions.
    """
    if mode == "jacfwd":
        def push(direction):
            return jvp(function, (primal,), (direction.expand_as(primal),))[1]
        out = vmap(push)(directions)
        return tuple(o.movedim(0, -1) for o in out) if isinstance(out, tuple) else out.movedim(0, -1)
    if mode == "jacrev":
        def shifted(y):
            return function(primal + torch.tensordot(y, directions, dims=1))
        return jacrev(shifted, chunk_size=chunk_size)(primal.new_zeros(len(directions)))
    raise ValueError(f"jacobian mode must be 'jacfwd' or 'jacrev', got {mode!r}")


def sh_basis_jacobian(normals: torch.Tensor) -> torch.Tensor:
    """d H_b / d n_a of `mofa.decoder.lighting.sh_basis`: normals (..., 3) -> (..., 9, 3). Every H_b is a
    polynomial of degree <= 2 in n, so the central difference with unit step, (H(n + e_a) - H(n - e_a)) / 2,
    is its derivative exactly (up to rounding), from the one definition of the basis."""
    eye = torch.eye(3, dtype=normals.dtype, device=normals.device)
    shifted = normals[..., None, :]  # (..., 1, 3)
    return ((sh_basis(shifted + eye) - sh_basis(shifted - eye)) / 2).transpose(-1, -2)


def local_derivatives(camera, model_vertices: torch.Tensor, model_normals: torch.Tensor, albedo: torch.Tensor,
                      rotation: torch.Tensor, translation: torch.Tensor, light: torch.Tensor,
                      left_screen: torch.Tensor, left_colour: torch.Tensor,
                      ambient_offset: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-vertex derivatives of o_v = left_screen_v @ screen_v + left_colour_v @ colour_v through
    `shade_and_project`, in closed form: (d o / d model vertex, d o / d model normal) (B, N, C, 3) each and
    d o / d(rotation, translation) (B, N, C, 6).

    camera: the decoder's PinholeCamera; model_vertices, model_normals, albedo: (B, N, 3); rotation,
    translation: (B, 3); light: (B, 27); left_screen (B, N, C, 2), left_colour (B, N, C, 3).
    With R the camera rotation, p = R m + t (mm) and n' = R n: d screen / d p = f / z [[1, 0, -x/z],
    [0, 1, -y/z]] (pinhole), d colour_c / d n' = albedo_c sum_k L_ck dH_k / dn' (`sh_basis_jacobian`);
    so with g_p = left_screen d screen / d p and g_n = left_colour d colour / d n', d o / d m = g_p R,
    d o / d n = g_n R, d o / d rotation_j = g_p (dR_j m) + g_n (dR_j n) (dR_j: forward mode through the
    3 x 3 `camera_rotation`, 3 tangents per image) and d o / d translation = g_p * translation_scale_mm.
    """
    rot = camera_rotation(rotation)  # (B, 3, 3)
    points, camera_normals = to_camera(model_vertices, model_normals, rotation, translation, camera)
    inv_z = 1 / points[..., 2:3]  # (B, N, 1)
    eye2 = torch.eye(2, dtype=points.dtype, device=points.device).expand(*points.shape[:2], 2, 2)
    d_project = torch.cat([eye2, -(points[..., :2] * inv_z)[..., None]], -1) * (camera.focal_length_px * inv_z)[..., None]
    g_point = left_screen @ d_project  # (B, N, C, 3)
    coeffs = light_coefficients(light, ambient_offset)  # (B, 3, 9)
    d_shade = torch.einsum("bck,bnka->bnca", coeffs, sh_basis_jacobian(camera_normals))  # (B, N, 3, 3)
    g_normal = left_colour @ (albedo[..., None] * d_shade)  # (B, N, C, 3)
    d_rot = _along(camera_rotation, rotation, torch.eye(3, dtype=rotation.dtype, device=rotation.device),
                   "jacfwd", None)  # (B, 3, 3, 3 angles)
    d_points = torch.einsum("bakj,bnk->bnaj", d_rot, model_vertices)  # (B, N, 3, 3 angles)
    d_normals = torch.einsum("bakj,bnk->bnaj", d_rot, model_normals)
    pose = torch.cat([g_point @ d_points + g_normal @ d_normals, g_point * camera.translation_scale_mm], -1)
    return g_point @ rot[:, None], g_normal @ rot[:, None], pose


NORMAL_EPS = 1e-12  # vertex_normals' normalisation eps (torch.nn.functional.normalize)


@dataclasses.dataclass
class OneRing:
    """A mesh's one-ring structure with the geometry basis gathered over it, built once per fit by
    `one_ring`, for `mesh_jacobian`. S = 1 + the largest vertex degree.

    neighbours: (N, S) int64, vertex v itself in slot 0, then its neighbours, padded with v;
    corner_slot: (T * 9,) int64, for corners (i, j) of face t (row-major), v * S + s with v the vertex
    at corner i and s the slot of corner j's vertex in v's row;
    basis: (N, S * 3, K) the geometry basis over the slots, [v, 3 s + r, k] = basis[k, neighbours[v, s], r].
    """
    neighbours: torch.Tensor
    corner_slot: torch.Tensor
    basis: torch.Tensor


def one_ring(triangles: torch.Tensor, basis: torch.Tensor) -> OneRing:
    """triangles: (T, 3) int64; basis: (K, N, 3) -> the `OneRing` of the mesh (on basis' device)."""
    n = basis.shape[1]
    tri = triangles.cpu().numpy().astype(np.int64)
    v, w = np.repeat(tri, 3, axis=1).ravel(), np.tile(tri, (1, 3)).ravel()  # corners i and j of (t, i, j)
    keys = np.unique(np.concatenate([v * n + w, np.arange(n) * (n + 1)]))  # every (v, w) pair, v with itself
    pv, pw = keys // n, keys % n
    order = np.lexsort((pw, pw != pv, pv))  # by v, itself first
    slot = np.empty_like(keys)
    slot[order] = np.arange(len(keys)) - np.searchsorted(pv[order], pv[order])
    size = int(slot.max()) + 1
    neighbours = np.repeat(np.arange(n)[:, None], size, 1)
    neighbours[pv, slot] = pw
    corner_slot = v * size + slot[np.searchsorted(keys, v * n + w)]
    as_index = lambda a: torch.as_tensor(a, device=basis.device)  # noqa: E731
    gathered = basis[:, as_index(neighbours)].permute(1, 2, 3, 0).reshape(n, 3 * size, basis.shape[0])
    return OneRing(as_index(neighbours), as_index(corner_slot), gathered.contiguous())


def mesh_jacobian(ring: OneRing, vertices: torch.Tensor, triangles: torch.Tensor, d_vertex: torch.Tensor,
                  d_normal: torch.Tensor, vertex: torch.Tensor | None = None) -> torch.Tensor:
    """The derivative along the K basis directions y_k of per-vertex outputs o_v that depend on
    vertex v and its normal (`vertex_normals`) only: d_vertex @ d vertices / d y + d_normal @ d normals / d y.

    vertices: (B, N, 3); triangles: (T, 3); d_vertex, d_normal: (B, V, C, 3), d o_v / d(vertex v, normal v)
    for the V vertices `vertex` (V,) int64 (all N when None) -> (V, B, C, K) (vertex-major;
    `.transpose(0, 1)` gives (B, V, C, K)).

    The maths of the jvp of vertex_normals, analytically: n = m / max(|m|, eps), m_v the sum over the
    faces (a, b, c) around v of cross(b - a, c - a), so dm_v = sum over those faces of
    cross(c - b, da) + cross(a - c, db) + cross(b - a, dc) = sum over v's one ring w of cross(s_vw, dx_w),
    s_vw the sum of the edges opposite w in the faces holding v and w; and dn = P dm with
    P = (I - n n^T) / |m| (I / eps where |m| <= eps). With Q = d_normal P, row c of Q [s_vw]_x is
    cross(Q_c, s_vw): all K tangents are one (C, 3 S) @ (3 S, K) product per vertex over the gathered basis.
    """
    batch, n_vertices = vertices.shape[:2]
    size = ring.neighbours.shape[1]
    a, b, c = (vertices.index_select(1, triangles[:, i]) for i in range(3))  # (B, T, 3)
    face_normals = torch.cross(b - a, c - a, dim=-1)
    opposite = torch.stack([c - b, a - c, b - a], 2)  # (B, T, corner j, 3)
    pairs = opposite[:, :, None].expand(-1, -1, 3, -1, -1).reshape(batch, -1, 3)  # (B, T * 9, 3), o_j for (t, i, j)
    ring_edges = vertices.new_zeros(batch, n_vertices * size, 3).index_add_(1, ring.corner_slot, pairs)
    normals = torch.zeros_like(vertices)
    for i in range(3):
        normals = normals.index_add(1, triangles[:, i], face_normals)
    ring_edges, gathered = ring_edges.view(batch, n_vertices, size, 3), ring.basis
    if vertex is not None:
        ring_edges, normals, gathered = ring_edges[:, vertex], normals[:, vertex], gathered[vertex]
        n_vertices = len(vertex)
    length = normals.norm(dim=-1, keepdim=True)[..., None]  # (B, N, 1, 1)
    unit = normals[..., None] / length.clamp_min(NORMAL_EPS)  # (B, N, 3, 1)
    radial = torch.where(length > NORMAL_EPS, unit @ unit.transpose(-1, -2), torch.zeros_like(length))
    projected = d_normal @ (torch.eye(3, dtype=vertices.dtype, device=vertices.device) - radial)
    projected = projected / length.clamp_min(NORMAL_EPS)  # (B, N, C, 3)
    rows = torch.cross(projected[:, :, :, None], ring_edges[:, :, None], dim=-1)
    rows[:, :, :, 0] += d_vertex  # (B, N, C, S, 3)
    n_out = d_vertex.shape[2]
    rows = rows.permute(1, 0, 2, 3, 4).reshape(n_vertices, batch * n_out, 3 * size)
    return torch.bmm(rows, gathered).view(n_vertices, batch, n_out, gathered.shape[-1])


def _vertex_rows(decoder, codes: torch.Tensor, left_screen: torch.Tensor, left_colour: torch.Tensor,
                 mode: JacobianMode, chunk_size: int | None, ring: OneRing | None,
                 vertex: torch.Tensor | None = None) -> torch.Tensor:
    """Per vertex v of `vertex` (V,) int64 (all N when None), the derivative of o_v = left_screen_v @
    screen_v + left_colour_v @ colour_v (left_screen (B, V, C, 2), left_colour (B, V, C, 3), held constant)
    by the code: (B, V, C, D).

    Chain rule split at the mesh:
    - per vertex, d o_v / d(vertex v, normal v, albedo v) and d o_v / d(rotation, translation, light),
      neither touching the mesh: torch.func through `shade_and_project` (forward mode; reverse mode
      for mode "jacrev"), 9 and 33 tangents; mode "analytic" writes those of vertex, normal and pose
      out (`local_derivatives`), the colour albedo * shade(normal, light) being linear in the albedo
      (d = shading) and in the light (d colour_c / d light_ck = albedo_c H_k(camera-space normal));
    - the mesh: d(vertices)/d(shape, expression) is the geometry basis, d(albedo)/d(reflectance) the
      reflectance basis, and d(normals)/d(shape, expression) (the one-ring coupling, the expensive part)
      analytic in `mesh_jacobian` (mode "analytic"; ring: `one_ring` of the decoder, built here when
      None), or torch.func through `vertex_normals` with the K basis vectors as tangents ("jacfwd", the
      reference; "jacrev").
    """
    if mode not in get_args(JacobianMode):
        raise ValueError(f"jacobian mode must be one of {get_args(JacobianMode)}, got {mode!r}")
    codes = codes.detach()
    layout = decoder.layout
    parts = layout.split(codes)
    mesh = decoder.geometry(parts.shape, parts.expression)
    normals = vertex_normals(mesh, decoder.triangles)
    albedo = linear_combination(decoder.mean_reflectance, decoder.reflectance_basis, parts.reflectance)
    basis, reflectance_basis = decoder.geometry_basis, decoder.reflectance_basis  # (K, N, 3) each
    full_mesh = mesh
    if vertex is not None:  # the per-vertex work on V alone; the normals' one ring still sees all
        mesh, normals, albedo = mesh[:, vertex], normals[:, vertex], albedo[:, vertex]
        basis, reflectance_basis = basis[:, vertex], reflectance_basis[:, vertex]
    n_vertices, n_out = mesh.shape[1], left_screen.shape[2]
    eye = lambda n: torch.eye(n, dtype=codes.dtype, device=codes.device)  # noqa: E731

    def combine(screen: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        return (left_screen * screen[..., None, :]).sum(-1) + (left_colour * colour[..., None, :]).sum(-1)

    if mode == "analytic":
        camera_normals = normals @ camera_rotation(parts.rotation).transpose(1, 2)
        d_vertex, d_normal, pose = local_derivatives(decoder.camera, mesh, normals, albedo, parts.rotation,
                                                     parts.translation, parts.light, left_screen, left_colour,
                                                     decoder.ambient_offset)
        shading = shade(camera_normals, light_coefficients(parts.light, decoder.ambient_offset))
        d_albedo = left_colour * shading[:, :, None]
        d_light = left_colour[..., None] * (albedo[..., None] * sh_basis(camera_normals)[:, :, None])[:, :, None]
        rigid = torch.cat([pose, d_light.flatten(-2)], -1)  # light: channel-major, as light_coefficients
        ring = one_ring(decoder.triangles, decoder.geometry_basis) if ring is None else ring
        geometry = mesh_jacobian(ring, full_mesh, decoder.triangles, d_vertex, d_normal, vertex).transpose(0, 1)
    else:
        # Per vertex: inputs (vertex, normal, albedo) stacked as (B, N, 9).
        local = _along(lambda x: combine(*shade_and_project(decoder, *x.split(3, -1), parts.rotation,
                                                            parts.translation, parts.light)),
                       torch.cat([mesh, normals, albedo], -1), eye(9)[:, None].expand(9, n_vertices, 9), mode,
                       chunk_size)  # (B, N, C, 9)
        sizes = [layout.sizes[name] for name in ("rotation", "translation", "light")]
        rigid = _along(lambda p: combine(*shade_and_project(decoder, mesh, normals, albedo, *p.split(sizes, -1))),
                       torch.cat([parts.rotation, parts.translation, parts.light], -1), eye(sum(sizes)), mode,
                       chunk_size)
        d_vertex, d_normal, d_albedo = local.split(3, -1)
        d_normals = _along(lambda v: vertex_normals(v, decoder.triangles), full_mesh, decoder.geometry_basis, mode,
                           chunk_size)
        d_normals = d_normals if vertex is None else d_normals[:, vertex]
        geometry = d_vertex @ basis.permute(1, 2, 0) + d_normal @ d_normals  # (B, N, C, K)
    reflectance = torch.bmm(d_albedo.transpose(0, 1).flatten(1, 2), reflectance_basis.permute(1, 2, 0))
    reflectance = reflectance.view(n_vertices, len(codes), n_out, layout.n_reflectance).transpose(0, 1)
    return torch.cat([geometry, reflectance, rigid], -1)  # CodeLayout's order


def decoder_jacobian(decoder, codes: torch.Tensor, mode: JacobianMode = "analytic",
                     chunk_size: int | None = JACREV_CHUNK,
                     ring: OneRing | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """d(screen)/d(code) (B, N, 2, D) and d(colours)/d(code) (B, N, 3, D) for every image at once
    (`_vertex_rows` with identities on the left; modes there)."""
    batch, n_vertices = codes.shape[0], decoder.mean_shape.shape[0]
    eye = torch.eye(5, dtype=codes.dtype, device=codes.device).expand(batch, n_vertices, 5, 5)
    rows = _vertex_rows(decoder, codes, eye[..., :2], eye[..., 2:], mode, chunk_size, ring)
    return rows[:, :, :2], rows[:, :, 2:]


def screen_jacobian(decoder, codes: torch.Tensor, vertex: torch.Tensor, mode: JacobianMode = "analytic",
                    chunk_size: int | None = JACREV_CHUNK) -> torch.Tensor:
    """d(screen)/d(code) of the vertices `vertex` (L,) int64 alone, (B, L, 2, D): the screen does not
    depend on the normals, so the decoder runs on those L vertices only, with all D code entries as
    tangents (forward mode; reverse mode for mode "jacrev")."""
    layout = decoder.layout
    mean, basis = decoder.mean_shape[vertex], decoder.geometry_basis[:, vertex]

    def screen(x: torch.Tensor) -> torch.Tensor:
        parts = layout.split(x)
        mesh = linear_combination(mean, basis, torch.cat([parts.shape, parts.expression], -1))
        unused = torch.zeros_like(mesh)  # normals and albedo: the colours are thrown away
        return shade_and_project(decoder, mesh, unused, unused, parts.rotation, parts.translation, parts.light)[0]

    return _along(screen, codes.detach(), torch.eye(layout.size, dtype=codes.dtype, device=codes.device),
                  "jacrev" if mode == "jacrev" else "jacfwd", chunk_size)


def _jacobian_blocks(decoder, codes: torch.Tensor, images: torch.Tensor, photo_scale: torch.Tensor | None,
                     targets: LandmarkTargets | None, reg_scale: torch.Tensor, mode: JacobianMode,
                     ring: OneRing | None, screen: torch.Tensor | None = None,
                     vertex: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The row blocks of `residual_jacobian`: photometric (B, 3 V, D) if photo_scale is given, V the
    vertices `vertex` (V,) int64 (all N when None), landmarks (B, 2 L, D) if targets are, regulariser
    (B, D, D). screen: decoder(codes).screen (B, N, 2) when the caller has it."""
    blocks = []
    if photo_scale is not None:
        if screen is None:
            with torch.no_grad():
                screen = decoder(codes).screen
        if vertex is not None:
            photo_scale, screen = photo_scale[:, vertex], screen[:, vertex]
        scale = photo_scale[..., None, None]
        eye = torch.eye(3, dtype=codes.dtype, device=codes.device)
        # rows s_i (dI/du du/dx - dc/dx): image_gradient (B, V, 3, 2) on the screen, -s_i I on the colour
        blocks.append(_vertex_rows(decoder, codes, scale * image_gradient(images, screen), -scale * eye, mode,
                                   JACREV_CHUNK, ring, vertex).flatten(1, 2))
    if targets is not None:
        size = codes.new_tensor([images.shape[-1], images.shape[-2]])  # (width, height)
        d_screen = screen_jacobian(decoder, codes, targets.vertex, mode)  # (B, L, 2, D)
        blocks.append((targets.weights.sqrt()[..., None, None] * d_screen / size[:, None]).flatten(1, 2))
    blocks.append(torch.diag(reg_scale).expand(len(codes), -1, -1))
    return blocks


def residual_jacobian(decoder, codes: torch.Tensor, images: torch.Tensor, photo_scale: torch.Tensor | None,
                      targets: LandmarkTargets | None, reg_scale: torch.Tensor,
                      mode: JacobianMode = "analytic", ring: OneRing | None = None) -> torch.Tensor:
    """d r / d x of `residuals` at `codes`, (B, M, D), same row order (ring: see `_vertex_rows`)."""
    return torch.cat(_jacobian_blocks(decoder, codes, images, photo_scale, targets, reg_scale, mode, ring), 1)


# -- the optimiser ----------------------------------------------------------------------------------

def normal_equations(decoder, codes: torch.Tensor, images: torch.Tensor, targets: LandmarkTargets | None,
                     reg_scale: torch.Tensor, weights: LossWeights, mode: JacobianMode = "analytic",
                     ring: OneRing | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """J^T J (B, D, D) and J^T r (B, D) of the IRLS-weighted residuals, linearised at `codes`
    (block by block: the photometric block is skipped when weights.photo = 0, and covers only the
    vertices that some image of the batch sees: the others' rows and residuals are 0)."""
    with torch.no_grad():
        decoded = decoder(codes.detach())  # one decoder pass for the weights, the residuals and dI/du
        scale = photometric_scale(decoder, codes, images, weights, decoded=decoded)
        r = residuals(decoder, codes, images, scale, targets, reg_scale, decoded=decoded)
    vertex = None
    if scale is not None:
        vertex = scale.gt(0).any(0).nonzero()[:, 0]
        n_vertices = scale.shape[1]
        photo = r[:, :3 * n_vertices].view(len(r), n_vertices, 3)[:, vertex].flatten(1)
        r = torch.cat([photo, r[:, 3 * n_vertices:]], 1)
    blocks = _jacobian_blocks(decoder, codes, images, scale, targets, reg_scale, mode, ring, decoded.screen, vertex)
    parts = r.split([block.shape[1] for block in blocks], 1)
    # The regulariser block is diag(reg_scale): its products are written out, not multiplied.
    jtj = torch.diag_embed((reg_scale ** 2).expand_as(codes)).clone()
    jtr = parts[-1] * reg_scale
    for block, part in zip(blocks[:-1], parts[:-1]):
        jtj.baddbmm_(block.transpose(1, 2), block)
        jtr += (part[:, None] @ block)[:, 0]  # (not J^T @ r: 5x slower)
    return jtj, jtr


def _subset(targets: LandmarkTargets | None, index: torch.Tensor) -> LandmarkTargets | None:
    if targets is None:
        return None
    return LandmarkTargets(targets.vertex, targets.points[index], targets.weights[index])


def fit(decoder, images: torch.Tensor, landmarks: torch.Tensor | None = None,
        confidences: torch.Tensor | None = None, weights: LossWeights | None = None, steps: int = 50,
        damping: float = 1e-3, dtype: torch.dtype = torch.float32, jacobian: JacobianMode = "analytic",
        init: torch.Tensor | None = None) -> FitResult:
    """Fit codes to images by Levenberg-Marquardt Gauss-Newton on the MoFA energy.

    decoder: mofa.decoder.Decoder (its camera's image size must match the images);
    images: (B, 3, H, W) linear RGB in [0, 1]; landmarks: (B, 68, 2) px in the iBUG order, or None
    for the variant without landmarks (then weights.land must be 0; with weights.land = 0 landmarks
    are ignored; a point with a NaN coordinate, unknown, gets confidence 0); confidences: (B, 68) or
    None (all 1); weights: the loss weights (mofa.losses;
    None: the paper's, landmarks off); steps: iterations (each one linear solve, accepted or rejected); damping: initial lambda of
    (J^T J + lambda diag(J^T J)) dx = -J^T r; dtype: float32 or float64 (the decoder is copied when its
    dtype differs); jacobian: "analytic", or the torch.func references "jacfwd" and "jacrev" (`_vertex_rows`);
    init: (B, D) start codes, default zero (the mean face).
    Every image has its own lambda; images are linearised together in one batched Jacobian. With
    weights.photo = 0 (landmarks and regulariser alone) only the landmark vertices' screen Jacobian is
    computed, which costs little.
    """
    start = time.perf_counter()
    weights = LossWeights() if weights is None else weights
    if weights.invisible_cost:
        raise ValueError(f"the Gauss-Newton baseline fits the paper's energy, which has no invisible cost; got "
                         f"invisible_cost {weights.invisible_cost}: pass dataclasses.replace(weights, invisible_cost=0)")
    if decoder.mean_shape.dtype != dtype:
        decoder = copy.deepcopy(decoder).to(dtype)
    images = images.to(dtype)
    batch = images.shape[0]
    landmarks = None if landmarks is None else landmarks.to(dtype)
    confidences = None if confidences is None else confidences.to(dtype)
    if landmarks is not None and not torch.isfinite(landmarks).all():
        missing = ~torch.isfinite(landmarks).all(-1)  # (B, 68)
        confidences = torch.where(missing, 0.0, 1.0 if confidences is None else confidences).to(dtype)
        landmarks = torch.where(missing[..., None], 0.0, landmarks)
    targets = landmark_targets(decoder, landmarks, confidences, weights)
    lm_for_energy = landmarks if targets is not None else None
    x = images.new_zeros(batch, decoder.code_size) if init is None else init.detach().to(dtype).clone()
    reg_scale = regulariser_scale(decoder.layout, weights, x)
    ring = one_ring(decoder.triangles, decoder.geometry_basis) if jacobian == "analytic" and weights.photo > 0 else None
    current = energy(decoder, x, images, lm_for_energy, confidences, weights)
    history = [current]
    lam = torch.full_like(current, damping)
    growth = torch.full_like(current, 2.0)
    accepted = torch.zeros(batch, dtype=torch.int64, device=x.device)
    jtj = x.new_zeros(batch, x.shape[1], x.shape[1])
    jtr = torch.zeros_like(x)
    stale = torch.ones(batch, dtype=torch.bool, device=x.device)  # needs a new linearisation
    for _ in range(steps):
        if stale.any():
            idx = stale.nonzero()[:, 0]
            a, g = normal_equations(decoder, x[idx], images[idx], _subset(targets, idx), reg_scale, weights,
                                    jacobian, ring)
            jtj[idx], jtr[idx] = a, g
        with torch.no_grad():
            diag = jtj.diagonal(dim1=1, dim2=2)
            diag = diag.clamp_min(1e-9 * diag.amax(-1, keepdim=True).clamp_min(1e-30))
            # The damped normal matrix is symmetric positive definite: Cholesky. (Batched LU,
            # torch.linalg.solve, also trips an MKL error, SLASWP parameter 6, with 2+ CPU threads.)
            factor, info = torch.linalg.cholesky_ex(jtj + torch.diag_embed(lam[:, None] * diag))
            step = torch.cholesky_solve(-jtr[..., None], factor)[..., 0]
            trial = x + step
            # Decrease of the least-squares model ||r + J dx||^2 that the step promises.
            predicted = -(2 * (step * jtr).sum(-1) + (step[:, None] @ jtj @ step[..., None])[:, 0, 0])
        trial_energy = energy(decoder, trial, images, lm_for_energy, confidences, weights)
        ok = (trial_energy < current) & torch.isfinite(trial_energy) & (info == 0) & torch.isfinite(step).all(-1)
        # Nielsen's update (Madsen, Nielsen & Tingleff 2004, Sec. 3.2): shrink lambda by up to 3x when the
        # energy fell as much as promised (gain ratio near 1), keep it near 0.5; grow it 2x, 4x, 8x, ...
        # over consecutive rejections.
        gain = (current - trial_energy) / predicted.clamp_min(torch.finfo(x.dtype).tiny)
        shrink = (1 - (2 * gain - 1) ** 3).clamp(min=1 / 3)
        lam = torch.where(ok, lam * shrink, lam * growth).clamp(*DAMPING_RANGE)
        growth = torch.where(ok, torch.full_like(growth, 2.0), growth * 2)
        x = torch.where(ok[:, None], trial, x)
        current = torch.where(ok, trial_energy, current)
        accepted += ok.long()
        stale = ok
        history.append(current)
    seconds = time.perf_counter() - start
    return FitResult(codes=x, energy_history=torch.stack(history, 1), seconds_per_image=seconds / max(batch, 1),
                     accepted=accepted, damping=lam)
