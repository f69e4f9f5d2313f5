"""Stage `synthetic`: render the synthetic ground-truth training and test sets of the face model.

Writes results/<preset>/data/synthetic/{train,test}/ (format: mofa/data/synthetic.py) and
results/<preset>/metrics/synthetic.json (counts, images per second).

    python -m pipelines.synthetic --config config/ci.yaml
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from mofa.config import camera_from_config, results_dir
from pipelines import _stage

NAME = "synthetic"
PARAMS = ("face_model", "camera", "light", "synthetic")
NEEDS = ("face_model",)
SOURCES = ("config/schema.yaml", "mofa/config.py", "mofa/io.py", "mofa/facemodel", "mofa/decoder", "mofa/render",
           "mofa/data", "pipelines/_stage.py", "pipelines/synthetic.py")
log = logging.getLogger(f"mofa.stage.{NAME}")


def data_dir(cfg: Mapping) -> Path:
    return results_dir(cfg) / "data" / "synthetic"


# The files of a split folder (format: mofa/data/synthetic.py), each a declared output, so that the
# workflow engines regenerate a split when any of them is gone or stale; tests/test_synthetic.py checks
# that a written split holds exactly these.
SPLIT_FILES = ("images.npy", "codes.npy", "landmarks.npy", "landmark_visible.npy", "vertices.npy", "samples.csv",
               "manifest.json")
SPLITS = ("train", "test")


def outputs(cfg: Mapping) -> dict[str, Path]:
    root = data_dir(cfg)
    files = {f"{split}_{Path(name).stem}" if name != "manifest.json" else split: root / split / name
             for split in SPLITS for name in SPLIT_FILES}
    return {**files, "metrics": results_dir(cfg) / "metrics" / "synthetic.json"}


def manifests(cfg: Mapping) -> dict[str, Path]:
    """The files that describe the data this stage writes; their hashes stamp every table and figure made
    from it (pipelines/tables.py)."""
    return {f"synthetic/{split}": data_dir(cfg) / split / "manifest.json" for split in SPLITS}


def run(cfg: dict) -> dict:
    from mofa.data.synthetic import generate
    from mofa.facemodel import build_face_model

    model = build_face_model(cfg)
    manifests = generate(cfg, model, camera_from_config(cfg), data_dir(cfg))
    for split, manifest in manifests.items():
        log.info("synthetic %s: %d images, %.1f images/s", split, manifest["count"], manifest["images_per_second"])
    metrics = {f"{split}_{key}": m[key] for split, m in manifests.items()
               for key in ("count", "seconds", "images_per_second")}
    _stage.write_json(outputs(cfg)["metrics"], metrics)
    return metrics


if __name__ == "__main__":
    raise SystemExit(_stage.main(NAME, run, __doc__.splitlines()[0]))
