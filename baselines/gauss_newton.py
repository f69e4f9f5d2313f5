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

Jacobians: torch.func forward mode, split at the mesh (`decoder_jacobian`): per-vertex derivatives of
`shade_and_project` (9 tangents: vertex, normal, albedo; 33: pose and light), chained with the bases
(d vertices / d shape, expression; d albedo / d reflectance) and with d normals / d (shape, expression),
one jvp of `vertex_normals` per basis vector. Each pass covers the whole batch: image b's outputs
depend on code b only, so one shared tangent gives every image its own derivative. Bilinear sampling
has no forward-mode rule in PyTorch, so dI/du (3 x 2 per vertex) comes from reverse mode through the
same `mofa.losses.sample_image` the loss uses. `jacobian="jacrev"` computes the same pieces in reverse
mode, for comparison: with D = 246 inputs and ~33k outputs it is some 300x slower.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from typing import Literal

import torch
from torch.func import jacrev, jvp, vmap

from mofa.decoder.camera import camera_rotation, camera_translation, project
from mofa.decoder.geometry import linear_combination, vertex_normals
from mofa.decoder.lighting import light_coefficients, shade
from mofa.landmarks import LANDMARKS_46, N_LANDMARKS
from mofa.losses import LossWeights, mofa_loss, sample_image, visible_vertices

IRLS_EPS = 1e-3  # colour distance below which a vertex's robust weight stops growing
DAMPING_RANGE = (1e-9, 1e9)  # lambda stays inside; the update is Nielsen's (see `fit`)
JACREV_CHUNK = 1024  # cotangents per reverse-mode chunk (memory bound)

JacobianMode = Literal["jacfwd", "jacrev"]


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
                      eps: float = IRLS_EPS) -> torch.Tensor:
    """(B, N) per-vertex factor s_i of the photometric residual at the linearisation point `codes`:
    sqrt(w_photo / (2 n_norm max(||I(u_i) - c_i||, eps))) on the visible set V, 0 elsewhere (the factor 2:
    see the module docstring)."""
    height, width = images.shape[-2:]
    with torch.no_grad():
        decoded = decoder(codes)
        visible = visible_vertices(decoded, decoder.face_mask, height, width)
        norm = (sample_image(images, decoded.screen) - decoded.colours).norm(dim=-1)
        if weights.photo_normalise == "fixed":
            count = torch.full_like(norm[:, 0], max(int(decoder.face_mask.sum()), 1))
        else:
            count = visible.sum(-1).clamp_min(1).to(norm)
        scale = (weights.photo / (2 * count[:, None] * norm.clamp_min(eps))).sqrt()
        return torch.where(visible, scale, torch.zeros_like(scale))


def residuals(decoder, codes: torch.Tensor, images: torch.Tensor, photo_scale: torch.Tensor,
              targets: LandmarkTargets | None, reg_scale: torch.Tensor) -> torch.Tensor:
    """The residual vector r(x) with frozen IRLS weights and visible set, (B, M):
    M = 3 N (photometric, vertex-major) + 2 * 46 (landmarks, if any) + D (regulariser).

    codes: (B, D); images: (B, 3, H, W); photo_scale: (B, N) from `photometric_scale`;
    targets: from `landmark_targets`; reg_scale: (D,) from `regulariser_scale`.
    """
    decoded = decoder(codes)
    parts = [(photo_scale[..., None] * (sample_image(images, decoded.screen) - decoded.colours)).flatten(1)]
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
    of the code. Composed from the decoder's building blocks as `mofa.decoder.Decoder.forward` composes
    them (tests/test_baselines.py checks that the two agree); vertex i's outputs depend on vertex i's
    inputs only, which is what makes its Jacobian cheap."""
    rot = camera_rotation(rotation).transpose(1, 2)
    vertices = model_vertices @ rot + camera_translation(translation, decoder.camera)[:, None]
    shading = shade(model_normals @ rot, light_coefficients(light, decoder.ambient_offset))
    return project(vertices, decoder.camera), albedo * shading


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


def decoder_jacobian(decoder, codes: torch.Tensor, mode: JacobianMode = "jacfwd",
                     chunk_size: int | None = JACREV_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """d(screen)/d(code) (B, N, 2, D) and d(colours)/d(code) (B, N, 3, D) for every image at once.

    Chain rule split at the mesh, each piece by torch.func:
    - per vertex, d(u_i, c_i)/d(v_i, n_i, albedo_i): 9 tangents through `shade_and_project`, and
      d(u, c)/d(rotation, translation, light): 33 tangents, neither touching the mesh;
    - the mesh: d(vertices)/d(shape, expression) is the geometry basis, d(albedo)/d(reflectance) the
      reflectance basis, and d(normals)/d(shape, expression) one pass of `vertex_normals` with the
      basis vectors as tangents (the one-ring coupling; the expensive part).
    """
    codes = codes.detach()
    layout = decoder.layout
    parts = layout.split(codes)
    slices = layout.slices
    mesh = decoder.geometry(parts.shape, parts.expression)
    normals = vertex_normals(mesh, decoder.triangles)
    albedo = linear_combination(decoder.mean_reflectance, decoder.reflectance_basis, parts.reflectance)
    batch, n_vertices = codes.shape[0], mesh.shape[1]
    d_screen = codes.new_zeros(batch, n_vertices, 2, layout.size)
    d_colour = codes.new_zeros(batch, n_vertices, 3, layout.size)

    def columns(*names: str) -> torch.Tensor:
        return torch.cat([torch.arange(slices[n].start, slices[n].stop, device=codes.device) for n in names])

    # Per vertex: inputs (vertex, normal, albedo) stacked as (B, N, 9).
    per_vertex = torch.cat([mesh, normals, albedo], -1)
    one_hot = torch.eye(9, dtype=codes.dtype, device=codes.device)[:, None, :].expand(9, n_vertices, 9)
    ds_local, dc_local = _along(
        lambda x: shade_and_project(decoder, *x.split(3, -1), parts.rotation, parts.translation, parts.light),
        per_vertex, one_hot, mode, chunk_size)  # (B, N, 2, 9), (B, N, 3, 9)
    rigid = ("rotation", "translation", "light")
    sizes = [layout.sizes[name] for name in rigid]
    d_screen[..., columns(*rigid)], d_colour[..., columns(*rigid)] = _along(
        lambda p: shade_and_project(decoder, mesh, normals, albedo, *p.split(sizes, -1)),
        torch.cat([parts.rotation, parts.translation, parts.light], -1),
        torch.eye(sum(sizes), dtype=codes.dtype, device=codes.device), mode, chunk_size)
    geometry = columns("shape", "expression")
    if len(geometry):
        basis = decoder.geometry_basis  # (K, N, 3)
        d_normals = _along(lambda v: vertex_normals(v, decoder.triangles), mesh, basis, mode, chunk_size)
        d_mesh = torch.cat([basis.permute(1, 2, 0).expand_as(d_normals), d_normals], -2)  # (B, N, 6, K)
        d_screen[..., geometry] = ds_local[..., :6] @ d_mesh
        d_colour[..., geometry] = dc_local[..., :6] @ d_mesh
    if layout.n_reflectance:
        d_colour[..., slices["reflectance"]] = dc_local[..., 6:] @ decoder.reflectance_basis.permute(1, 2, 0)
    return d_screen, d_colour


def residual_jacobian(decoder, codes: torch.Tensor, images: torch.Tensor, photo_scale: torch.Tensor,
                      targets: LandmarkTargets | None, reg_scale: torch.Tensor,
                      mode: JacobianMode = "jacfwd") -> torch.Tensor:
    """d r / d x of `residuals` at `codes`, (B, M, D), same row order."""
    d_screen, d_colour = decoder_jacobian(decoder, codes, mode)
    with torch.no_grad():
        screen = decoder(codes).screen
    grad = image_gradient(images, screen)  # (B, N, 3, 2)
    photo = photo_scale[..., None, None] * (grad @ d_screen - d_colour)  # (B, N, 3, D)
    blocks = [photo.flatten(1, 2)]
    if targets is not None:
        size = screen.new_tensor([images.shape[-1], images.shape[-2]])
        land = targets.weights.sqrt()[..., None, None] * d_screen[:, targets.vertex] / size[:, None]
        blocks.append(land.flatten(1, 2))
    blocks.append(torch.diag(reg_scale).expand(len(codes), -1, -1))
    return torch.cat(blocks, 1)


# -- the optimiser ----------------------------------------------------------------------------------

def normal_equations(decoder, codes, images, targets, reg_scale, weights, mode: JacobianMode = "jacfwd"):
    """J^T J (B, D, D) and J^T r (B, D) of the IRLS-weighted residuals, linearised at `codes`."""
    scale = photometric_scale(decoder, codes, images, weights)
    with torch.no_grad():
        r = residuals(decoder, codes, images, scale, targets, reg_scale)
    jac = residual_jacobian(decoder, codes, images, scale, targets, reg_scale, mode)
    jt = jac.transpose(1, 2)
    return jt @ jac, (jt @ r[..., None])[..., 0]


def _subset(targets: LandmarkTargets | None, index: torch.Tensor) -> LandmarkTargets | None:
    if targets is None:
        return None
    return LandmarkTargets(targets.vertex, targets.points[index], targets.weights[index])


def fit(decoder, images: torch.Tensor, landmarks: torch.Tensor | None = None,
        confidences: torch.Tensor | None = None, weights: LossWeights | None = None, steps: int = 50,
        damping: float = 1e-3, dtype: torch.dtype = torch.float32, jacobian: JacobianMode = "jacfwd",
        init: torch.Tensor | None = None) -> FitResult:
    """Fit codes to images by Levenberg-Marquardt Gauss-Newton on the MoFA energy.

    decoder: mofa.decoder.Decoder (its camera's image size must match the images);
    images: (B, 3, H, W) linear RGB in [0, 1]; landmarks: (B, 68, 2) px in the iBUG order, or None
    for the variant without landmarks (then weights.land must be 0; with weights.land = 0 landmarks
    are ignored); confidences: (B, 68) or None (all 1); weights: the loss weights (mofa.losses;
    None: the paper's, landmarks off); steps: iterations (each one linear solve, accepted or rejected); damping: initial lambda of
    (J^T J + lambda diag(J^T J)) dx = -J^T r; dtype: float32 or float64 (the decoder is copied when its
    dtype differs); init: (B, D) start codes, default zero (the mean face).
    Every image has its own lambda; images are linearised together in one batched Jacobian.
    """
    start = time.perf_counter()
    weights = LossWeights() if weights is None else weights
    if decoder.mean_shape.dtype != dtype:
        decoder = copy.deepcopy(decoder).to(dtype)
    images = images.to(dtype)
    batch = images.shape[0]
    landmarks = None if landmarks is None else landmarks.to(dtype)
    confidences = None if confidences is None else confidences.to(dtype)
    targets = landmark_targets(decoder, landmarks, confidences, weights)
    lm_for_energy = landmarks if targets is not None else None
    x = images.new_zeros(batch, decoder.code_size) if init is None else init.detach().to(dtype).clone()
    reg_scale = regulariser_scale(decoder.layout, weights, x)
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
            a, g = normal_equations(decoder, x[idx], images[idx], _subset(targets, idx), reg_scale, weights, jacobian)
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
