"""How MEDIAPIPE_TO_IBUG68 (mofa/realdata/landmarks68.py) is fitted, and its NME on the eval split.

The fitting set is AFLW2000-3D images that no preset evaluates on: the train split of the preparation's
hash split (split_seed 0) at the largest eval_fraction of the presets (the eval split at a smaller
fraction is a subset of it), with |yaw| <= 60 degrees. Each image is cropped as the benchmark crops it
(the Haar box, else one from the ground truth; margin 0.4, 240 px), MediaPipe's mesh is found in the
crop, and `fit_index_map` refines the published correspondence (PUBLISHED_MAP) point by point.

    python -m mofa.realdata.fit_landmark_map fit   # refit; writes landmarks68_fit.json, prints the map
    python -m mofa.realdata.fit_landmark_map nme [--preset default]  # NME of the published and current maps
                                                                     # on the preset's AFLW2000 eval split

Both read MOFA_AFLW2000_DIR. The fit's record (its image ids, options, the map, NMEs) is
mofa/realdata/landmarks68_fit.json; tests/test_realdata.py checks it names no eval image of any preset
and that its map is MEDIAPIPE_TO_IBUG68.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mofa.errors import MofaError
from mofa.io import write_text
from mofa.realdata.crop_policy import CropPolicy

RECORD = Path(__file__).with_name("landmarks68_fit.json")
PRESETS = ("ci", "default", "paper")
MAX_YAW_DEG = 60.0

# The correspondence of PeizhiYan/Mediapipe_2_Dlib_Landmarks (mp2dlib.py, 2024): MediaPipe vertex (or
# the mean of two) per iBUG point, 0-68 in order; the start of the fit.
PUBLISHED_MAP: tuple[tuple[int, ...], ...] = (
    (127,), (234,), (93,), (132, 58), (58, 172), (136,), (150,), (176,), (152,), (400,), (379,), (365,),
    (397, 288), (361,), (323,), (454,), (356,),
    (70,), (63,), (105,), (66,), (107,), (336,), (296,), (334,), (293,), (300,),
    (168, 6), (197, 195), (5,), (4,), (75,), (97,), (2,), (326,), (305,),
    (33,), (160,), (158,), (133,), (153,), (144,), (362,), (385,), (387,), (263,), (373,), (380,),
    (61,), (39,), (37,), (0,), (267,), (269,), (291,), (321,), (314,), (17,), (84,), (91,),
    (78,), (82,), (13,), (312,), (308,), (317,), (14,), (87,),
)


def split_settings() -> tuple[int, float]:
    """(split_seed, eval_fraction) whose train split no preset evaluates on: the presets share one seed,
    and the largest fraction's eval split contains the smaller ones'."""
    from mofa.config import load_config

    settings = {(load_config(p)["real_data"]["split_seed"], load_config(p)["real_data"]["eval_fraction"])
                for p in PRESETS}
    seeds = {seed for seed, _ in settings}
    if len(seeds) != 1:
        raise MofaError(f"the presets split AFLW2000 with different seeds {sorted(seeds)}: no common train split")
    return seeds.pop(), max(fraction for _, fraction in settings)


def samples_of(split: str, root=None) -> list:
    """The AFLW2000-3D samples in `split` ('train' or 'eval') of split_settings()."""
    from mofa.realdata.adapters import iter_aflw2000, root_from_env
    from mofa.realdata.prepare import split_of

    seed, fraction = split_settings()
    return [s for s in iter_aflw2000(root or root_from_env("aflw2000")) if split_of(s.group, seed, fraction) == split]


def meshes(samples) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe's mesh in each sample's benchmark crop -> (ids, mesh (N, 468, 2) crop px, ground truth
    (N, 68, 2) crop px, yaw (N,) deg) of the crops where MediaPipe finds a face."""
    from mofa.realdata.benchmark_crops import BenchmarkCrops
    from mofa.realdata.landmarks68 import MediaPipeLandmarker

    crops = BenchmarkCrops(samples, CropPolicy.schema_default())
    ids, mesh, gt, yaw = [], [], [], []
    with MediaPipeLandmarker() as landmarker:
        for i, sample_id in enumerate(crops.ids):
            found = landmarker.detect(crops.images[i])
            if found is not None:
                ids.append(sample_id)
                mesh.append(found[0])
                gt.append(crops.gt_landmarks[i])
                yaw.append(crops.manifest.yaw_deg.iloc[i])
    return ids, np.asarray(mesh).reshape(-1, 468, 2), np.asarray(gt, np.float64).reshape(-1, 68, 2), np.asarray(yaw)


def map_nme(mesh: np.ndarray, gt: np.ndarray, index_map) -> float:
    """Mean 68-point NME (fraction of sqrt(w h) of the GT box) of a map's points."""
    from mofa.metrics import nme_aflw2000
    from mofa.realdata.landmarks68 import mediapipe_to_ibug68

    return float(np.mean(nme_aflw2000(mediapipe_to_ibug68(mesh, index_map), gt)))


def fit() -> dict:
    from mofa.realdata.landmarks68 import fit_index_map

    seed, fraction = split_settings()
    policy = CropPolicy.schema_default()
    ids, mesh, gt, yaw = meshes(samples_of("train"))
    keep = np.abs(yaw) <= MAX_YAW_DEG
    fitted = fit_index_map(mesh[keep], gt[keep], start_map=PUBLISHED_MAP)
    record = {"fitted_on": f"AFLW2000-3D train split (split_seed {seed}, eval_fraction {fraction}, the largest of "
                           f"the presets {list(PRESETS)}), |yaw| <= {MAX_YAW_DEG:g} deg, MediaPipe found a face",
              "crops": f"mofa.realdata.benchmark_crops (Haar, else the ground-truth box), margin {policy.margin}, "
                       f"{policy.image_size} px",
              "start_map": "PUBLISHED_MAP (PeizhiYan/Mediapipe_2_Dlib_Landmarks)",
              "images": [i for i, k in zip(ids, keep) if k],
              "train_nme": {"published": map_nme(mesh[keep], gt[keep], PUBLISHED_MAP),
                            "fitted": map_nme(mesh[keep], gt[keep], fitted)},
              "map": [list(entry) for entry in fitted]}
    write_text(RECORD, json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["fit", "nme"])
    parser.add_argument("--preset", default="default", help="nme: whose eval split (default: the default preset's)")
    args = parser.parse_args(argv)
    try:
        if args.command == "fit":
            record = fit()
            print(f"fitted on {len(record['images'])} images; NME there {record['train_nme']}; wrote {RECORD}")
            print("MEDIAPIPE_TO_IBUG68 = (" + ", ".join(f"({', '.join(map(str, e))},)" if len(e) == 1 else
                                                        f"({', '.join(map(str, e))})" for e in record["map"]) + ")")
        else:
            from mofa.realdata.landmarks68 import MEDIAPIPE_TO_IBUG68

            from mofa.config import load_config
            from pipelines.real_data import split_samples

            samples = split_samples(load_config(args.preset), "aflw2000", "eval")
            ids, mesh, gt, yaw = meshes(samples)
            print(f"{args.preset} preset's AFLW2000 eval split: {len(samples)} images, MediaPipe found "
                  f"a face in {len(ids)}; 68-point NME of the map's points against pt3d_68:")
            maps = {"published (PeizhiYan)": PUBLISHED_MAP, "current MEDIAPIPE_TO_IBUG68": MEDIAPIPE_TO_IBUG68}
            for name, index_map in maps.items():
                print(f"  {name}: {100 * map_nme(mesh, gt, index_map):.2f} % (|yaw| <= 60: "
                      f"{100 * map_nme(mesh[np.abs(yaw) <= 60], gt[np.abs(yaw) <= 60], index_map):.2f} %)")
    except MofaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
