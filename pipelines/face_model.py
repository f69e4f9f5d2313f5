"""Stage `face_model`: build (or read from the cache) the configured face model and draw its model card.

Writes, under results/<preset>/: models/face_model.npz (the built model; a hard link into
face_model.cache_dir), figures/face_model.png (the model card) and metrics/face_model.json (sizes, timings).

    python -m pipelines.face_model --config config/ci.yaml
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from mofa.config import camera_from_config, config_hash, results_dir
from pipelines import _stage

NAME = "face_model"
# Config sections this stage reads: dvc.yaml's `params:` and the Snakemake rule's params list the same.
PARAMS = ("face_model", "camera")
# Code it runs (what it imports, found by tests/test_workflow.py): dvc.yaml's `deps:` and the Snakemake
# rule's input list the same, so that an edit to any of it reruns the stage under both engines.
SOURCES = ("config/schema.yaml", "mofa/__init__.py", "mofa/errors.py", "mofa/io.py", "mofa/config.py", "mofa/facemodel",
           "mofa/decoder", "mofa/render", "mofa/figures/__init__.py", "mofa/figures/face_model_card.py",
           "mofa/bench.py", "mofa/losses.py", "mofa/landmarks.py", "mofa/training/__init__.py",
           "mofa/training/precision.py",  # the provenance line names the training precision
           "pipelines/__init__.py", "pipelines/_stage.py", "pipelines/tables.py", "pipelines/face_model.py")

log = logging.getLogger(f"mofa.stage.{NAME}")


def outputs(cfg: Mapping) -> dict[str, Path]:
    """The files this stage writes for a config."""
    root = results_dir(cfg)
    return {"model": root / "models" / "face_model.npz",
            "figure": root / "figures" / "face_model.png",
            "metrics": root / "metrics" / "face_model.json"}


def run(cfg: dict) -> dict:
    """Build the face model, publish it, draw its model card, write the metrics; returns the metrics."""
    from mofa.decoder import CodeLayout
    from mofa.facemodel import build_face_model, cache_path
    from mofa.figures.face_model_card import plot_face_model_card
    from pipelines.tables import figure_metadata

    out = outputs(cfg)
    cached = cache_path(cfg)
    from_cache = cached.exists()

    with _stage.timed(f"face model {'read from the cache' if from_cache else 'built'}") as build:
        model = build_face_model(cfg)
    log.info("face model %s: %d vertices, %d triangles, %d/%d/%d shape/expression/reflectance modes",
             model.name, model.n_vertices, len(model.triangles), model.n_shape, model.n_expression,
             model.n_reflectance)
    _stage.publish(cached, out["model"])

    with _stage.timed("model card") as card:
        plot_face_model_card(model, camera_from_config(cfg), out["figure"], metadata=figure_metadata(cfg, NAME))
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
