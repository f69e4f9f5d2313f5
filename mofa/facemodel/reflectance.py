"""An analytic per-vertex reflectance (albedo) prior for face models that have none (ICT-FaceKit).

It is NOT derived from scans. Mean: a plausible light skin albedo with lip, brow and cheek colours
placed from the 68 landmarks, and fixed colours for eyes, mouth interior, teeth and lashes. Modes,
all on the skin only: global tone, redness, yellowness, lip colour, lip darkness, brow darkness, cheek
flush, then smooth spatial variation (a 2D cosine series over the frontal face times luminance and
two chroma directions). Raw modes are orthonormalised in that order (QR) and scaled to a chosen
per-vertex RMS, so coefficients have a N(0, 1) prior. Everything is deterministic.
"""
from __future__ import annotations

import numpy as np
from matplotlib.path import Path as PolygonPath

SKIN = np.array([0.78, 0.57, 0.47])
LIPS = np.array([0.62, 0.33, 0.32])
BROWS = np.array([0.30, 0.22, 0.17])
CHEEK_FLUSH = np.array([0.04, -0.015, -0.015])
PART_COLOURS = {
    "mouth_interior": (0.35, 0.12, 0.12), "teeth": (0.85, 0.82, 0.72), "sclera": (0.85, 0.82, 0.78),
    "iris": (0.25, 0.15, 0.08), "lashes": (0.08, 0.06, 0.05),
}
LUMINANCE = np.array([1.0, 1.0, 1.0]) / np.sqrt(3)
RED_GREEN = np.array([1.0, -1.0, 0.0]) / np.sqrt(2)
YELLOW_BLUE = np.array([1.0, 1.0, -2.0]) / np.sqrt(6)
# Per-vertex RMS (over skin vertices and channels) of one standard deviation of each named mode.
NAMED_MODE_RMS = {"tone": 0.05, "redness": 0.025, "yellowness": 0.02, "lip_colour": 0.012,
                  "lip_darkness": 0.01, "brow_darkness": 0.005, "cheek_flush": 0.003}
SPATIAL_RMS = 0.02  # first luminance cosine mode; higher frequencies and chroma are smaller


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """points (N, 2), segment a-b -> (N,) distances."""
    ab = b - a
    t = np.clip(((points - a) @ ab) / max(ab @ ab, 1e-12), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


def _polyline_distance(points: np.ndarray, polyline: np.ndarray, closed: bool = False) -> np.ndarray:
    ends = np.vstack([polyline, polyline[:1]]) if closed else polyline
    return np.min([_segment_distance(points, p, q) for p, q in zip(ends[:-1], ends[1:])], axis=0)


def region_weights(vertices: np.ndarray, landmarks: np.ndarray, skin: np.ndarray) -> dict[str, np.ndarray]:
    """Soft (N,) weights in [0, 1] for lips, brows and cheeks from the 68 landmarks, on the frontal
    (x, y) plane of front-facing skin vertices. Distances in the model's units (mm)."""
    xy = vertices[:, :2]
    lm = vertices[landmarks]
    front = skin & (vertices[:, 2] > lm[27:36, 2].min() - 25.0)  # in front of the nose base, minus margin
    outer_lip = lm[48:60, :2]
    inside = PolygonPath(outer_lip).contains_points(xy)
    d_lip = _polyline_distance(xy, outer_lip, closed=True)
    lips = np.where(inside, 1.0, np.exp(-(d_lip / 1.5) ** 2)) * front
    d_brow = np.minimum(_polyline_distance(xy, lm[17:22, :2]), _polyline_distance(xy, lm[22:27, :2]))
    brows = np.exp(-(d_brow / 4.0) ** 2) * front
    cheek_centres = [(lm[1, :2] + lm[31, :2]) / 2, (lm[15, :2] + lm[35, :2]) / 2]
    cheeks = sum(np.exp(-np.sum((xy - c) ** 2, 1) / (2 * 15.0 ** 2)) for c in cheek_centres) * front
    return {"lips": lips, "brows": brows, "cheeks": np.clip(cheeks, 0, 1)}


def _cosine_orders(count: int) -> list[tuple[int, int]]:
    orders, total = [], 1
    while len(orders) < count:
        orders += [(i, total - i) for i in range(total + 1)]
        total += 1
    return orders[:count]


def analytic_reflectance_prior(vertices: np.ndarray, landmarks: np.ndarray, parts: dict[str, np.ndarray],
                               n_modes: int, skin_region: np.ndarray | None = None
                               ) -> tuple[np.ndarray, np.ndarray]:
    """vertices: (N, 3) mean shape (mm); landmarks: (68,); parts: name -> (N,) bool masks with keys
    'skin' and optional PART_COLOURS keys -> mean (N, 3) in [0, 1] and basis (n_modes, N, 3)."""
    n = len(vertices)
    skin = parts["skin"] & (skin_region if skin_region is not None else True)
    w = region_weights(vertices, landmarks, skin)
    mean = np.tile(SKIN, (n, 1))
    mean += w["cheeks"][:, None] * CHEEK_FLUSH
    mean = mean * (1 - w["lips"][:, None]) + w["lips"][:, None] * LIPS
    mean = mean * (1 - w["brows"][:, None]) + w["brows"][:, None] * BROWS
    for name, colour in PART_COLOURS.items():
        if name in parts:
            mean[parts[name]] = colour
    if n_modes == 0:
        return np.clip(mean, 0, 1), np.zeros((0, n, 3))

    s = skin[:, None].astype(float)
    named = {
        "tone": mean * s,
        "redness": RED_GREEN * s,
        "yellowness": YELLOW_BLUE * s,
        "lip_colour": w["lips"][:, None] * RED_GREEN,
        "lip_darkness": -w["lips"][:, None] * LUMINANCE,
        "brow_darkness": -w["brows"][:, None] * LUMINANCE,
        "cheek_flush": w["cheeks"][:, None] * RED_GREEN,
    }
    raw, rms = list(named.values()), list(NAMED_MODE_RMS.values())
    lo, hi = vertices[skin, :2].min(0), vertices[skin, :2].max(0)
    unit = (vertices[:, :2] - lo) / (hi - lo)  # [0, 1] over the skin's frontal extent
    n_spatial = max(0, n_modes - len(raw))
    orders = _cosine_orders((n_spatial + 2) // 3)
    spatial = []
    for i, j in orders:
        field = np.cos(np.pi * i * unit[:, 0]) * np.cos(np.pi * j * unit[:, 1]) * skin
        falloff = SPATIAL_RMS / (1.0 + 0.5 * (i + j - 1))
        spatial += [(field[:, None] * LUMINANCE, falloff), (field[:, None] * RED_GREEN, 0.5 * falloff),
                    (field[:, None] * YELLOW_BLUE, 0.5 * falloff)]
    raw += [m for m, _ in spatial]
    rms += [r for _, r in spatial]
    raw, rms = raw[:n_modes], np.asarray(rms[:n_modes])

    q, r = np.linalg.qr(np.stack([m.reshape(-1) for m in raw], axis=1))
    q *= np.sign(np.diag(r))  # deterministic signs: each mode keeps the direction of its raw field
    n_skin = 3 * int(skin.sum())
    basis = (q * (rms * np.sqrt(n_skin))).T.reshape(n_modes, n, 3)
    return np.clip(mean, 0, 1), basis
