"""Stage `synthetic`: render the synthetic ground-truth training and test sets of the face model.

Writes results/<preset>/data/synthetic/{train,test}/ (format: mofa/data/synthetic.py) and
results/<preset>/metrics/synthetic.json (counts, images per second).

    python -m pipelines.synthetic --config config/ci.yaml
"""
from __future__ import annotations

import logging

from mofa.data.synthetic import generate
from mofa.facemodel import build_face_model
from mofa.settings import Settings
from pipelines import _stage, paths
from pipelines.stages import STAGES

STAGE = STAGES["synthetic"]  # its params, sources and outputs (pipelines/stages.py)
NAME = STAGE.name
outputs, manifests, data_dir = STAGE.outputs, STAGE.manifests, paths.synthetic_dir
log = logging.getLogger(f"mofa.stage.{NAME}")


def run(cfg: dict) -> dict:
    settings = Settings.from_config(cfg)
    model = build_face_model(settings.face_model)
    manifests = generate(settings.synthetic, model, settings.camera, data_dir(cfg), settings.light.ambient_offset)
    for split, manifest in manifests.items():
        log.info("synthetic %s: %d images, %.1f images/s", split, manifest["count"], manifest["images_per_second"])
    metrics = {f"{split}_{key}": m[key] for split, m in manifests.items()
               for key in ("count", "seconds", "images_per_second")}
    _stage.write_json(outputs(cfg)["metrics"], metrics)
    return metrics


if __name__ == "__main__":
    raise SystemExit(_stage.main(NAME, run, __doc__.splitlines()[0]))
