"""Automatic 68-point landmarks: MediaPipe Face Mesh (468 points), mapped to the iBUG 68.

MediaPipe 0.10.14 ships its face detector and face-mesh models inside the wheel, so this works
offline. Its legacy Face Mesh graph is run with one extra output, the face detections, whose score
becomes the landmark confidence. (Its C++ side prints four start-up lines to stderr; harmless.)
"""
from __future__ import annotations

import itertools
import warnings

import numpy as np

from mofa.errors import MofaError
from mofa.landmarks import N_LANDMARKS
from mofa.realdata.detect import native_stderr_silenced


MEDIAPIPE_VERSION = "0.10.14"
N_MESH = 468

# MediaPipe Face Mesh vertex -> iBUG 68 point: each iBUG point is one mesh vertex or the mean of two.
# Fitted by `python -m mofa.realdata.fit_landmark_map fit` (its record, with the image ids, is
# landmarks68_fit.json): the correspondence of PeizhiYan/Mediapipe_2_Dlib_Landmarks (mp2dlib.py, 2024),
# refined point by point with `fit_index_map` on 621 AFLW2000-3D images of the train split that no preset
# evaluates on (split_seed 0, eval_fraction 0.25, |yaw| <= 60 degrees, benchmark crops, MediaPipe found a
# face), a change kept only where it lowered that point's mean error by more than 0.3 % of the landmark box.
# NME (68 points) there: published 4.22 % -> fitted 3.73 %. On the default preset's eval split, which the
# fit never saw (`... fit_landmark_map nme`): 172 of 186 images with a mesh, published 4.58 %, this map
# 4.08 % (3.72 % at |yaw| <= 60). The map before this one was fitted on AFLW2000 images at even positions,
# about half of that eval split among them; it scored the same there (4.08 %, 3.73 %).
MEDIAPIPE_TO_IBUG68: tuple[tuple[int, ...], ...] = (
    # jaw 0-16, from the subject's right ear (image left) round the chin
    (127,), (93, 234), (132, 93), (132, 58), (172,), (136,), (149, 150), (176,), (152,),
    (400,), (379, 378), (365,), (397,), (288, 361), (361, 323), (454, 323), (356,),
    # right brow 17-21, left brow 22-26
    (70,), (53, 63), (66, 53), (65,), (55, 65),
    (285, 295), (295, 296), (296, 283), (283, 293), (300,),
    # nose bridge 27-30, lower nose 31-35
    (168, 6), (197, 195), (5,), (275, 44),
    (99, 98), (97,), (2,), (460, 2), (327, 290),
    # right eye 36-41, left eye 42-47
    (7,), (144, 223), (153, 222), (133,), (153,), (144,),
    (362,), (385,), (257, 390), (249,), (373,), (380,),
    # outer lips 48-59
    (61,), (39, 74), (37,), (0,), (267,), (270, 269), (291,), (321, 405), (314,), (17,), (84,), (181, 91),
    # inner lips 60-67
    (78,), (82,), (13,), (268, 311), (306,), (316, 402), (14,), (87,),
)
assert len(MEDIAPIPE_TO_IBUG68) == N_LANDMARKS


def _index_pairs(index_map) -> np.ndarray:
    """(68, 2) int: each entry's two vertices (a single vertex twice), so the mean is one gather."""
    return np.array([(ix[0], ix[-1]) for ix in index_map], dtype=np.int64)


_PAIRS = _index_pairs(MEDIAPIPE_TO_IBUG68)


def mediapipe_to_ibug68(mesh_points, index_map=None) -> np.ndarray:
    """mesh_points: (..., 468 or 478, k) -> (..., 68, k) iBUG-order points (MEDIAPIPE_TO_IBUG68)."""
    mesh_points = np.asarray(mesh_points, dtype=np.float64)
    pairs = _PAIRS if index_map is None else _index_pairs(index_map)
    return 0.5 * (mesh_points[..., pairs[:, 0], :] + mesh_points[..., pairs[:, 1], :])


def fit_index_map(mesh_points, gt_landmarks, start_map=MEDIAPIPE_TO_IBUG68, candidates: int = 15,
                  min_gain: float = 0.003) -> tuple[tuple[int, ...], ...]:
    """How MEDIAPIPE_TO_IBUG68 was refined: for each iBUG point, the mesh vertex, or mean of two of
    the `candidates` best single vertices, with the least mean error / sqrt(w h) of the landmark box;
    kept instead of start_map's entry only when it gains more than min_gain.
    mesh_points: (B, 468, 2) px; gt_landmarks: (B, 68, 2) px, same images."""
    mesh, gt = np.asarray(mesh_points, np.float64), np.asarray(gt_landmarks, np.float64)
    extent = gt.max(1) - gt.min(1)
    scale = np.sqrt(extent[:, 0] * extent[:, 1])
    error = lambda p, k: float((np.linalg.norm(p - gt[:, k], axis=-1) / scale).mean())  # noqa: E731
    fitted = []
    for k in range(N_LANDMARKS):
        single = (np.linalg.norm(mesh - gt[:, k:k + 1], axis=-1) / scale[:, None]).mean(0)
        top = np.argsort(single)[:candidates]
        best, best_error = (int(top[0]),), float(single[top[0]])
        for i, j in itertools.combinations(top, 2):
            e = error(0.5 * (mesh[:, i] + mesh[:, j]), k)
            if e < best_error - 0.001:  # a pair only when it clearly beats one vertex
                best, best_error = (int(i), int(j)), e
        current = error(mesh[:, list(start_map[k])].mean(1), k)
        fitted.append(best if best_error < current - min_gain else tuple(start_map[k]))
    return tuple(fitted)


class MediaPipeLandmarker:
    """MediaPipe Face Mesh on one face crop at a time (static images, one face).

    `detect(rgb)` -> (mesh (468, 2) px, score) or None when no face is found; `landmarks68(rgb)` ->
    (landmarks (68, 2) px, confidence (68,)) or None. Pixel coordinates as everywhere here: 0-based,
    pixel centres at integers (MediaPipe's normalised [0, 1] spans the image's outer edges).
    Confidence: the score of MediaPipe's own face detection in the crop, the same for all 68 points
    (the mesh model gives no per-point score).
    """

    def __init__(self, min_detection_confidence: float = 0.5, min_presence: float = 0.5):
        # mediapipe 0.10.14 calls a protobuf API that protobuf 4.25 marks deprecated, once per result
        warnings.filterwarnings("ignore", message="SymbolDatabase.GetPrototype", category=UserWarning)
        try:
            import mediapipe  # noqa: F401
            from mediapipe.python.solution_base import SolutionBase
            from mediapipe.python.solutions import face_mesh
        except ImportError as e:
            raise MofaError(f"the landmark detector needs mediapipe ({e}); install it with "
                            f"`pip install mediapipe=={MEDIAPIPE_VERSION}`") from None
        self.version = getattr(mediapipe, "__version__", "?")
        self._graph = SolutionBase(
            binary_graph_path=face_mesh._BINARYPB_FILE_PATH,
            side_inputs={"num_faces": 1, "with_attention": False, "use_prev_landmarks": False},
            calculator_params={
                "facedetectionshortrangecpu__facedetectionshortrange__facedetection__"
                "TensorsToDetectionsCalculator.min_score_thresh": min_detection_confidence,
                "facelandmarkcpu__ThresholdingCalculator.threshold": min_presence,
            },
            outputs=["multi_face_landmarks", "face_detections"])
        with native_stderr_silenced():  # the graph starts, and its C++ side logs to fd 2, on the first image
            self._graph.process(input_data={"image": np.zeros((64, 64, 3), np.uint8)})

    def detect(self, rgb: np.ndarray) -> tuple[np.ndarray, float] | None:
        """rgb: (H, W, 3) uint8 -> ((468, 2) float64 px, detection score in [0, 1]) or None."""
        h, w = rgb.shape[:2]
        result = self._graph.process(input_data={"image": np.ascontiguousarray(rgb)})
        if not result.multi_face_landmarks:
            return None
        mesh = np.array([(p.x, p.y) for p in result.multi_face_landmarks[0].landmark[:N_MESH]], dtype=np.float64)
        mesh = mesh * (w, h) - 0.5
        score = float(result.face_detections[0].score[0]) if result.face_detections else float("nan")
        return mesh, score

    def landmarks68(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """rgb: (H, W, 3) uint8 -> ((68, 2) float64 px, (68,) float32 confidence) or None."""
        found = self.detect(rgb)
        if found is None:
            return None
        mesh, score = found
        confidence = np.full(N_LANDMARKS, score if np.isfinite(score) else 1.0, dtype=np.float32)
        return mediapipe_to_ibug68(mesh), confidence

    def close(self) -> None:
        self._graph.close()

    def __enter__(self) -> "MediaPipeLandmarker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
