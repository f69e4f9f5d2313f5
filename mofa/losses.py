"""MoFA's training loss (paper Sec. 6): E = w_land E_land + w_photo E_photo + w_reg E_reg.

Plain functions over batched tensors; `mofa_loss` wires them to a `Decoder` and a code for trainers.
Pixels follow `mofa.decoder.camera`: the centre of pixel (0, 0) is at (0, 0), u is the column, v the row.
Colours are linear RGB in [0, 1].
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F

from mofa.config import schema_default
from mofa.decoder.lighting import robust_light
from mofa.errors import MofaError
from mofa.landmarks import LANDMARKS_46, N_LANDMARKS

Normalise = Literal["fixed", "visible"]

# Paper Sec. 6 weights, defined once, as the loss section's defaults in presets/schema.yaml.
W_PHOTO = schema_default("loss", "photo")
W_REG = schema_default("loss", "reg")
W_REFLECTANCE = schema_default("loss", "reflectance")  # w_beta
W_EXPRESSION = schema_default("loss", "expression")  # w_delta


# -- image sampling ---------------------------------------------------------------------------------

def sample_image(images: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear image values at sub-pixel points.

    images: (B, C, H, W) float; points: (B, N, 2) pixels (u column, v row), pixel centres at integers
    -> (B, N, C). Outside the pixel-centre hull the image is blended with zeros (use `inside_image`).
    Differentiable in both the image and the points; dtype is the promotion of the two.
    """
    if not images.is_floating_point():
        raise ValueError(f"images must be float (linear RGB in [0, 1]), got {images.dtype}")
    dtype = torch.promote_types(images.dtype, points.dtype)
    images, points = images.to(dtype), points.to(dtype)
    height, width = images.shape[-2:]
    # align_corners=True puts -1 and +1 on the centres of the first and last pixels, which is our
    # convention (centre of pixel 0 at 0, of pixel W-1 at W-1).
    scale = points.new_tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)])
    grid = points * scale - 1.0  # (B, N, 2)
    sampled = F.grid_sample(images, grid[:, :, None, :], mode="bilinear", padding_mode="zeros",
                            align_corners=True)  # (B, C, N, 1)
    # contiguous: a norm over the last axis of the transposed view is ~50x slower on the CPU
    return sampled[..., 0].transpose(1, 2).contiguous()


def inside_image(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """points: (B, N, 2) pixels -> (B, N) bool, inside the hull of the pixel centres
    (0 <= u <= W-1, 0 <= v <= H-1), where bilinear sampling uses only real pixels."""
    u, v = points[..., 0], points[..., 1]
    return (u >= 0) & (u <= width - 1) & (v >= 0) & (v <= height - 1)


def safe_norm(x: torch.Tensor) -> torch.Tensor:
    """x: (..., D) -> (...,) Euclidean norm, exactly 0 at 0 with a zero (sub)gradient there, not NaN."""
    sq = (x * x).sum(-1)
    positive = sq > 0
    return torch.where(positive, torch.where(positive, sq, torch.ones_like(sq)).sqrt(), torch.zeros_like(sq))


# -- the three terms --------------------------------------------------------------------------------

def visible_vertices(decoded, face_mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The paper's set V: (B, N) bool, front-facing in this forward pass AND projected inside the image
    AND in the face region. decoded: a `DecodedFace`; face_mask: (N,) bool.

    Like the paper, this is back-face culling only: a front-facing vertex hidden behind another part of
    the face (a cheek behind the nose at large yaw) still counts.
    """
    return decoded.visible & inside_image(decoded.screen, height, width) & face_mask.to(torch.bool)[None]


def facing(decoded) -> torch.Tensor:
    """(B, N) cosine between each vertex normal and the direction to the camera (> 0: front-facing)."""
    towards = -decoded.vertices / decoded.vertices.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    return (decoded.normals * towards).sum(-1)


# Facing cosine over which a vertex's invisibility cost rises smoothly from 0 to its full value.
INVISIBLE_RAMP = 0.1


def invisibility(decoded, face_mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, N) in [0, 1]: 1 for a face-region vertex outside the image or facing away, 0 for one facing
    the camera by more than INVISIBLE_RAMP in cosine, a smooth ramp between (differentiable in the pose);
    0 outside the face region."""
    ramp = (1 - facing(decoded) / INVISIBLE_RAMP).clamp(0, 1)
    ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep
    inside = inside_image(decoded.screen, height, width)
    return torch.where(inside, ramp, torch.ones_like(ramp)) * face_mask.to(torch.bool)[None]


def photometric_loss(images: torch.Tensor, decoded, face_mask: torch.Tensor,
                     normalise: Normalise = "fixed", invisible_cost: float = 0.0) -> torch.Tensor:
    """E_photo, the robust l2,1 data term: sum over visible vertices of ||I(u_i) - c_i||_2 (the norm,
    not its square), I sampled bilinearly at the projected vertex u_i.

    images: (B, 3, H, W) linear RGB in [0, 1]; decoded: `DecodedFace` (screen (B, N, 2) px,
    colours (B, N, 3), visible (B, N)); face_mask: (N,) bool face region -> (B,).

    normalise:
    - "fixed" (default): divide by the number of face-region vertices, the same for every image and
      pose: the paper's Eq. 8, (1/N) sum over i in V with N the model's vertex count (here the face
      region's) and V the front-facing vertices.
    - "visible": divide by |V| instead (0 where nothing is visible), not the paper's. Averaging over
      the visible vertices rewards turning the face away from the camera (fewer, easier vertices);
      DESIGN.md section 8 measured that collapse (pitch error 118 degrees after 1,500 iterations).

    invisible_cost: 0 (the paper) or c > 0: each face-region vertex also costs c times its
    `invisibility` (c for one turned away or outside the image, as if its colour were c off), so the
    loss cannot be lowered by turning or sliding the face away from hard pixels; it is also a prior
    towards frontal poses (docs/cpu-findings.md measured 0.3 stopping E1 from learning yaw).
    """
    height, width = images.shape[-2:]
    face_mask = face_mask.to(device=decoded.screen.device, dtype=torch.bool)
    visible = visible_vertices(decoded, face_mask, height, width)
    residual = safe_norm(sample_image(images, decoded.screen) - decoded.colours)  # (B, N)
    total = torch.where(visible, residual, torch.zeros_like(residual)).sum(-1)
    if invisible_cost > 0:
        total = total + invisible_cost * invisibility(decoded, face_mask, height, width).sum(-1)
    if normalise == "fixed":
        return total / max(int(face_mask.sum()), 1)
    if normalise == "visible":
        return total / visible.sum(-1).clamp_min(1).to(total.dtype)
    raise ValueError(f"photometric normalise must be 'fixed' or 'visible', got {normalise!r}")


def landmark_loss(screen_landmarks: torch.Tensor, targets: torch.Tensor,
                  confidences: torch.Tensor | None, image_size) -> torch.Tensor:
    """E_land = sum_j conf_j ||u_j - s_j||^2 in image-normalised coordinates (pixels / image size).

    screen_landmarks: (B, L, 2) px, the projected model landmark vertices u_{k_j};
    targets: (B, L, 2) px, detected landmarks s_j; confidences: (B, L) in [0, 1] or None (all 1);
    image_size: int (square crop side, px) or (height, width) -> (B,).

    Why normalised: in pixels a 10 px error over 46 points at 240 px is 4,600, four orders of magnitude
    above the photometric term (~0.1), so w_land = 1 beside w_photo = 1.92 would make the photometric
    term irrelevant. Divided by the image size, the same error is 46 (10/240)^2 ~ 0.08, the same order
    as E_photo, which keeps the paper's relative weights meaningful, independently of the resolution.
    """
    if isinstance(image_size, (tuple, list)):
        height, width = image_size
    else:
        height = width = image_size
    scale = screen_landmarks.new_tensor([1.0 / width, 1.0 / height])
    sq = (((screen_landmarks - targets) * scale) ** 2).sum(-1)  # (B, L)
    if confidences is not None:
        sq = sq * confidences.to(sq)
    return sq.sum(-1)


def regulariser(shape: torch.Tensor, expression: torch.Tensor, reflectance: torch.Tensor,
                w_reflectance: float = W_REFLECTANCE, w_expression: float = W_EXPRESSION) -> torch.Tensor:
    """E_reg = sum alpha^2 + w_beta sum beta^2 + w_delta sum delta^2 (pose and light are free).

    shape alpha: (B, Ks); expression delta: (B, Ke); reflectance beta: (B, Kr) -> (B,).
    """
    return ((shape ** 2).sum(-1) + w_reflectance * (reflectance ** 2).sum(-1)
            + w_expression * (expression ** 2).sum(-1))


def with_fitted_light(decoder, code: torch.Tensor, images: torch.Tensor, iterations: int = 1) -> torch.Tensor:
    """code (B, D) with its light part replaced by the light that best explains `images` (B, 3, S, S)
    for the rest of the code, over its visible face vertices (`robust_light`: `iterations` IRLS solves,
    1 = plain least squares). The fitted light is a constant (no gradient); the other entries keep theirs."""
    with torch.no_grad():
        decoded = decoder(code.detach())
        observed = sample_image(images, decoded.screen)
        visible = visible_vertices(decoded, decoder.face_mask, *images.shape[-2:])
        sh = robust_light(decoded.normals, decoded.reflectance, observed, visible, iterations)
        sh[..., 0] -= decoder.ambient_offset
    light = decoder.layout.mask("light", device=code.device)
    fitted = torch.zeros_like(code)
    fitted[:, decoder.layout.slices["light"]] = sh.flatten(1).to(code.dtype)
    return torch.where(light, fitted, code)


# -- the whole loss ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of E = land E_land + photo E_photo + reg E_reg, with E_reg's inner weights, and the
    photometric normalisation. Defaults are the paper's (Sec. 6), with the landmark term off.

    land is a float, not only {0, 1}, so a trainer can decay a landmark warm-up
    (`dataclasses.replace(weights, land=...)`).
    """
    photo: float = W_PHOTO
    land: float = 0.0
    reg: float = W_REG
    reflectance: float = W_REFLECTANCE  # w_beta
    expression: float = W_EXPRESSION  # w_delta
    photo_normalise: Normalise = schema_default("loss", "photo_normalise")
    invisible_cost: float = schema_default("loss", "invisible_cost")

    def __post_init__(self) -> None:
        for field in ("photo", "land", "reg", "reflectance", "expression", "invisible_cost"):
            if not getattr(self, field) >= 0:
                raise MofaError(f"loss weight '{field}' must be >= 0, got {getattr(self, field)!r}")
        if self.photo_normalise not in ("fixed", "visible"):
            raise MofaError(f"loss key 'photo_normalise' must be 'fixed' or 'visible', got {self.photo_normalise!r}")

    @classmethod
    def from_config(cls, section: dict | None) -> "LossWeights":
        """From a config section {photo, land, reg, reflectance, expression, photo_normalise}; missing
        keys take the paper's defaults."""
        section = dict(section or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise MofaError(f"loss config: unknown keys {unknown}; expected some of {sorted(known)}")
        values = {}
        for key, value in section.items():
            if key == "photo_normalise":
                values[key] = str(value)
                continue
            try:
                values[key] = float(value)
            except (TypeError, ValueError):
                raise MofaError(f"loss config key '{key}': expected a number, got {value!r}") from None
        return cls(**values)


@dataclasses.dataclass
class LossTerms:
    """One evaluation of the loss. total: scalar batch mean of the weighted sum (call .backward() on
    it); photometric, regulariser: (B,) unweighted; landmark: (B,) unweighted, or None when no
    landmarks were given; decoded: the `DecodedFace` the terms were computed from."""
    total: torch.Tensor
    photometric: torch.Tensor
    landmark: torch.Tensor | None
    regulariser: torch.Tensor
    decoded: object

    def log(self) -> dict[str, float]:
        """Batch means as floats, for logging: total, photometric, regulariser, and landmark if given."""
        out = {"total": float(self.total.detach()), "photometric": float(self.photometric.detach().mean()),
               "regulariser": float(self.regulariser.detach().mean())}
        if self.landmark is not None:
            out["landmark"] = float(self.landmark.detach().mean())
        return out


def mofa_loss(decoder, code: torch.Tensor, images: torch.Tensor, landmarks: torch.Tensor | None = None,
              confidences: torch.Tensor | None = None, weights: LossWeights = LossWeights()) -> LossTerms:
    """Decode `code` and evaluate the full loss against `images`.

    decoder: `mofa.decoder.Decoder`; code: (B, decoder.code_size); images: (B, 3, S, S) linear RGB,
    S = decoder.camera.image_size; landmarks: (B, 68, 2) px in the iBUG order, or None (the LANDMARKS_46
    subset is selected here, against the decoder's 68 landmark vertices); confidences: (B, 68) or None.
    """
    size = decoder.camera.image_size
    if tuple(images.shape[-2:]) != (size, size):
        raise ValueError(f"images are {tuple(images.shape[-2:])} px but the decoder's camera expects "
                         f"{size}x{size}: crop or resize them, or configure the camera")
    decoded = decoder(code)
    parts = decoder.layout.split(code)
    photometric = photometric_loss(images, decoded, decoder.face_mask, weights.photo_normalise,
                                   weights.invisible_cost)
    reg = regulariser(parts.shape, parts.expression, parts.reflectance, weights.reflectance, weights.expression)
    per_image = weights.photo * photometric + weights.reg * reg
    landmark = None
    if landmarks is not None:
        if landmarks.shape[-2:] != (N_LANDMARKS, 2):
            raise ValueError(f"landmarks must be (B, 68, 2) px in the iBUG order, got {tuple(landmarks.shape)}")
        subset = list(LANDMARKS_46)
        predicted = decoded.screen[:, decoder.landmarks[subset]]
        conf = None if confidences is None else confidences[:, subset]
        landmark = landmark_loss(predicted, landmarks[:, subset].to(predicted), conf, size)
        per_image = per_image + weights.land * landmark
    elif weights.land > 0:
        raise ValueError(f"the landmark weight is {weights.land} but no landmarks were given: pass landmarks "
                         "or set the loss weight 'land' to 0")
    return LossTerms(total=per_image.mean(), photometric=photometric, landmark=landmark,
                     regulariser=reg, decoded=decoded)
