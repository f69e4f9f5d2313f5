"""Stage `real_data`: prepare the embedded real photographs as in the paper (Haar detection, square crop
at the camera's image size, MediaPipe landmarks mapped to the iBUG 68, pruning with a logged reason,
a train/eval split): AFLW2000-3D (training and evaluation) and the ibug68 photos (qualitative figures).

Reads real_data.aflw2000_root / ibug68_root, or the environment variables MOFA_AFLW2000_DIR /
MOFA_IBUG68_DIR when those are null. Writes results/<preset>/data/real/{aflw2000,ibug68}/ (format:
mofa/realdata/prepare.py; summary.json counts kept and dropped images by reason) and
results/<preset>/metrics/real_data.json.

    python -m pipelines.real_data --config config/ci.yaml
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from mofa.config import results_dir
from mofa.errors import MofaError
from pipelines import _stage

NAME = "real_data"
PARAMS = ("camera", "real_data")
NEEDS = ()
SOURCES = ("config/schema.yaml", "mofa/__init__.py", "mofa/config.py", "mofa/errors.py", "mofa/io.py", "mofa/landmarks.py", "mofa/metrics.py",
           "mofa/realdata", "pipelines/__init__.py", "pipelines/_stage.py", "pipelines/real_data.py")
DATASETS = ("aflw2000", "ibug68")
log = logging.getLogger(f"mofa.stage.{NAME}")


def data_dir(cfg: Mapping) -> Path:
    return results_dir(cfg) / "data" / "real"


def folder(cfg: Mapping, dataset: str) -> Path:
    """The prepared folder of one dataset (a RealFaceSet)."""
    return data_dir(cfg) / dataset


# The files of a prepared folder (format: mofa/realdata/prepare.py), each a declared output, so that the
# workflow engines prepare a dataset again when any of them is gone or stale; tests/test_real_stages.py
# checks that a prepared folder holds exactly these.
FOLDER_FILES = ("images.npy", "landmarks.npy", "landmark_confidence.npy", "gt_landmarks.npy", "transforms.npy",
                "manifest.csv", "summary.json")


def outputs(cfg: Mapping) -> dict[str, Path]:
    files = {f"{dataset}_{Path(name).stem}" if name != "summary.json" else dataset: folder(cfg, dataset) / name
             for dataset in DATASETS for name in FOLDER_FILES}
    return {**files, "metrics": results_dir(cfg) / "metrics" / "real_data.json"}


def manifests(cfg: Mapping) -> dict[str, Path]:
    """The files that describe the data this stage writes (every image kept or dropped); their hashes stamp
    every table and figure made from it (pipelines/tables.py)."""
    return {f"real/{dataset}": folder(cfg, dataset) / "manifest.csv" for dataset in DATASETS}


def dataset_root(cfg: Mapping, dataset: str) -> Path:
    """real_data.<dataset>_root, else the dataset's environment variable; a MofaError naming both."""
    from mofa.realdata.adapters import ENV_VARS

    key, var = f"{dataset}_root", ENV_VARS[dataset]
    value = cfg["real_data"][key] or os.environ.get(var)
    if not value:
        raise MofaError(f"real_data.{key} is null and {var} is not set: point {var} (or the config key) "
                        f"at the {dataset} folder, e.g. ../shared/real-faces/{'AFLW2000' if dataset == 'aflw2000' else dataset}")
    return Path(value)


def split_samples(cfg: Mapping, dataset: str = "aflw2000", split: str = "eval") -> list:
    """The samples of one split of a dataset as `run` splits them (real_data.max_images, split_seed,
    eval_fraction), whether or not the preparation kept them: the images a benchmark scores."""
    from mofa.realdata.adapters import adapter_for
    from mofa.realdata.prepare import split_of

    rd = cfg["real_data"]
    samples = list(adapter_for(dataset)(dataset_root(cfg, dataset)))[: rd["max_images"]]
    return [s for s in samples if split_of(s.group, rd["split_seed"], rd["eval_fraction"]) == split]


def run(cfg: dict) -> dict:
    from mofa.realdata.adapters import adapter_for
    from mofa.realdata.crop_policy import CropPolicy
    from mofa.realdata.prepare import prepare

    rd = cfg["real_data"]
    roots = {dataset: dataset_root(cfg, dataset) for dataset in DATASETS}  # fail before any work
    metrics = {}
    for dataset in DATASETS:
        samples = list(adapter_for(dataset)(roots[dataset]))[: rd["max_images"]]
        log.info("%s: %d images from %s", dataset, len(samples), roots[dataset])
        # ibug68 is only ever shown, never trained on: all of it is one split
        summary = prepare(samples, folder(cfg, dataset), CropPolicy.from_config(cfg), split_seed=rd["split_seed"],
                          eval_fraction=rd["eval_fraction"] if dataset == "aflw2000" else 0.0,
                          gt_box_fallback=rd["gt_box_fallback"])
        _stage.wrote(folder(cfg, dataset) / "summary.json")
        metrics.update({f"{dataset}_total": summary["total"], f"{dataset}_kept": summary["kept"],
                        f"{dataset}_seconds": summary["seconds"],
                        **{f"{dataset}_{split}": n for split, n in summary["kept_by_split"].items()},
                        **{f"{dataset}_dropped_{reason.replace(' ', '_')}": n for reason, n in summary["dropped"].items()}})
        if "landmark_nme_vs_gt" in summary:
            metrics[f"{dataset}_detected_landmark_nme_mean"] = summary["landmark_nme_vs_gt"]["mean"]
    if metrics["aflw2000_eval"] == 0 or metrics["aflw2000_train"] == 0:
        raise MofaError(f"AFLW2000: {metrics['aflw2000_train']} training and {metrics['aflw2000_eval']} eval images "
                        "kept; both splits need images (raise real_data.max_images or change eval_fraction)")
    _stage.write_json(outputs(cfg)["metrics"], metrics)
    return metrics


if __name__ == "__main__":
    raise SystemExit(_stage.main(NAME, run, __doc__.splitlines()[0]))
