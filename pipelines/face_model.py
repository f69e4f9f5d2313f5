"""Stage `face_model`: build (or read from the cache) the configured face model and draw its model card.

Writes, under results/<preset>/: models/face_model.npz (the built model; a hard link into
face_model.cache_dir), figures/face_model.png (the model card) and metrics/face_model.json (sizes, timings).

    python -m pipelines.face_model --config config/ci.yaml
"""
from __future__ import annotations

import logging

from mofa.config import config_hash
from mofa.decoder import CodeLayout
from mofa.facemodel import build_face_model, cache_path
from mofa.figures.face_model_card import plot_face_model_card
from mofa.settings import Settings
from pipelines import _stage
from pipelines.stages import STAGES
from pipelines.tables import figure_metadata

STAGE = STAGES["face_model"]  # its params, sources and outputs (pipelines/stages.py)
NAME = STAGE.name
outputs = STAGE.outputs
log = logging.getLogger(f"mofa.stage.{NAME}")


def run(cfg: dict) -> dict:
    """Build the face model, publish it, draw its model card, write the metrics; returns the metrics."""
    out, settings = outputs(cfg), Settings.from_config(cfg)
    cached = cache_path(settings.face_model)
    from_cache = cached.exists()

    with _stage.timed(f"face model {'read from the cache' if from_cache else 'built'}") as build:
        model = build_face_model(settings.face_model)
    log.info("face model %s: %d vertices, %d triangles, %d/%d/%d shape/expression/reflectance modes",
             model.name, model.n_vertices, len(model.triangles), model.n_shape, model.n_expression,
             model.n_reflectance)
    _stage.publish(cached, out["model"])

    with _stage.timed("model card") as card:
        plot_face_model_card(model, settings.camera, out["figure"], metadata=figure_metadata(cfg, NAME))
    _stage.wrote(out["figure"])

    metrics = {
        "face_model": model.name,
        "face_region": model.face_region,
        "n_vertices": model.n_vertices,
        "n_triangles": int(len(model.triangles)),
        "n_face_region_vertices": int(model.training_mask.sum()),
        "n_landmarks": int(len(model.landmarks)),
        "n_shape": model.n_shape,
        "n_expression": model.n_expression,
        "n_reflectance": model.n_reflectance,
        "code_size": CodeLayout.for_model(model).size,
        "from_cache": from_cache,
        "build_seconds": round(build["seconds"], 3),
        "figure_seconds": round(card["seconds"], 3),
        "config_hash": config_hash(cfg),
        "cache_file": str(cached),
    }
    _stage.write_json(out["metrics"], metrics)
    return metrics


if __name__ == "__main__":
    raise SystemExit(_stage.main(NAME, run, __doc__.splitlines()[0]))
