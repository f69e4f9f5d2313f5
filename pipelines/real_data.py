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

from mofa.errors import MofaError
from mofa.realdata.adapters import ENV_VARS, adapter_for
from mofa.realdata.crop_policy import CropPolicy
from mofa.realdata.prepare import prepare, split_of
from mofa.settings import Settings
from pipelines import _stage, paths
from pipelines.paths import DATASETS
from pipelines.stages import STAGES

STAGE = STAGES["real_data"]  # its params, sources and outputs (pipelines/stages.py)
NAME = STAGE.name
outputs, manifests, data_dir, folder = STAGE.outputs, STAGE.manifests, paths.real_dir, paths.real_folder
log = logging.getLogger(f"mofa.stage.{NAME}")


def dataset_root(cfg: Mapping, dataset: str) -> Path:
    """real_data.<dataset>_root, else the dataset's environment variable; a MofaError naming both."""
    key, var = f"{dataset}_root", ENV_VARS[dataset]
    value = cfg["real_data"][key] or os.environ.get(var)
    if not value:
        raise MofaError(f"real_data.{key} is null and {var} is not set: point {var} (or the config key) "
                        f"at the {dataset} folder, e.g. ../shared/real-faces/{'AFLW2000' if dataset == 'aflw2000' else dataset}")
    return Path(value)


def split_samples(cfg: Mapping, dataset: str = "aflw2000", split: str = "eval") -> list:
    """The samples of one split of a dataset as `run` splits them (real_data.max_images, split_seed,
    eval_fraction), whether or not the preparation kept them: the images a benchmark scores."""
    rd = cfg["real_data"]
    samples = list(adapter_for(dataset)(dataset_root(cfg, dataset)))[: rd["max_images"]]
    return [s for s in samples if split_of(s.group, rd["split_seed"], rd["eval_fraction"]) == split]


def run(cfg: dict) -> dict:
    rd = cfg["real_data"]
    roots = {dataset: dataset_root(cfg, dataset) for dataset in DATASETS}  # fail before any work
    metrics = {}
    for dataset in DATASETS:
        samples = list(adapter_for(dataset)(roots[dataset]))[: rd["max_images"]]
        log.info("%s: %d images from %s", dataset, len(samples), roots[dataset])
        # ibug68 is only ever shown, never trained on: all of it is one split
        summary = prepare(samples, folder(cfg, dataset), CropPolicy.from_settings(Settings.from_config(cfg)), split_seed=rd["split_seed"],
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
