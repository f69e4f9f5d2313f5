"""The 68-point Multi-PIE/iBUG landmark scheme, and the one 46-point subset the losses and metrics use.

Indices are 0-based into the 68-point order. "Right" and "left" are the subject's own (so the right
brow appears on the image's left in a frontal photo), as in the iBUG annotation.

Why 46 of the 68 (the paper also uses a 46-point subset, of 66):
- The inner-lip contour (60-67) lies on the mouth opening. The face model does not close over the
  opening consistently (the ICT mesh has a hole there and its mouth interior is separate geometry), so
  no fixed model vertex corresponds to these points.
- Jaw-line points 0-16 (except 4, 8, 12) slide along the face's silhouette as the head turns: a fixed
  vertex matches them only in frontal views.
- The chin (8) and two lower-jaw points (4, 12) stay on the front of the face for moderate yaw, so
  they are kept: they constrain the face's height and the jaw's width.
What remains: brows 17-26 (10), nose 27-35 (9), eyes 36-47 (12), outer lips 48-59 (12), jaw 4, 8, 12 (3).
"""
from __future__ import annotations

N_LANDMARKS = 68

# iBUG groups, as slices of the 68 points, for plotting and for per-region statistics.
IBUG_GROUPS: dict[str, slice] = {
    "jaw": slice(0, 17),
    "right_brow": slice(17, 22),
    "left_brow": slice(22, 27),
    "nose_bridge": slice(27, 31),
    "nose_lower": slice(31, 36),
    "right_eye": slice(36, 42),
    "left_eye": slice(42, 48),
    "outer_lips": slice(48, 60),
    "inner_lips": slice(60, 68),
}
# Groups drawn as closed polygons (the others are open polylines).
IBUG_CLOSED_GROUPS: frozenset[str] = frozenset({"right_eye", "left_eye", "outer_lips", "inner_lips"})

JAW_KEPT = (4, 8, 12)  # lower jaw and chin: on the front of the face for moderate yaw

LANDMARKS_46: tuple[int, ...] = tuple(sorted(JAW_KEPT + tuple(range(17, 60))))
"""The 46 landmark indices (into the 68) used by the landmark loss and the landmark error, sorted."""

assert len(LANDMARKS_46) == 46 and len(set(LANDMARKS_46)) == 46


def select_46(points):
    """points: (..., 68, k) numpy array or torch tensor -> (..., 46, k), the LANDMARKS_46 rows."""
    if points.shape[-2] != N_LANDMARKS:
        raise ValueError(f"expected 68 landmarks in the iBUG order along axis -2, got shape {tuple(points.shape)}")
    return points[..., list(LANDMARKS_46), :]
