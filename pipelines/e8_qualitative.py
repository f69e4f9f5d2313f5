"""Stage `e8_qualitative` (paper Figs. 2, 4-6): for each E3 variant, a grid over the ibug68 photos:
input, the reconstruction rendered over it, shaded geometry, reflectance, and the estimated light on a
sphere.

Writes results/<preset>/figures/e8_<encoder>_<noland|land>.png and metrics/e8_qualitative.json.

    python -m pipelines.e8_qualitative --config config/ci.yaml
"""
from __future__ import annotations

import logging

import numpy as np

from mofa.config import select_device
from mofa.facemodel import build_face_model
from mofa.figures.qualitative import plot_grid, reconstruction_panels
from mofa.realdata.prepare import RealFaceSet
from mofa.settings import Settings
from mofa.training.runs import load_encoder, training_decoder
from mofa.training.trainer import predict_codes
from pipelines import _stage, paths
from pipelines.e2_e3_real import variant_config, variant_label
from pipelines.stages import STAGES
from pipelines.tables import figure_metadata

STAGE = STAGES["e8_qualitative"]  # its params, sources and outputs (pipelines/stages.py)
NAME = STAGE.name
outputs = STAGE.outputs
log = logging.getLogger(f"mofa.stage.{NAME}")


def run(cfg: dict) -> dict:
    out, e3 = outputs(cfg), STAGES["e2_e3_real"].outputs(cfg)
    photos = RealFaceSet(paths.real_folder(cfg, "ibug68"), "all")
    n = len(photos) if cfg["e8"]["max_photos"] is None else min(len(photos), cfg["e8"]["max_photos"])
    batch = photos.batch(np.arange(n), "cpu")
    labels = [i.split("/", 1)[-1] for i in photos.ids[:n]]
    settings = Settings.from_config(cfg)
    model, device = build_face_model(settings.face_model), select_device(settings.device)
    metrics, stamp = {"photos": n}, figure_metadata(cfg, NAME)
    for encoder_name, landmarks in paths.e3_variants(cfg):
        name = paths.e3_variant_name(encoder_name, landmarks)
        own = Settings.from_config(variant_config(cfg, encoder_name))
        decoder = training_decoder(own, model).to(device)
        with _stage.timed(f"{name}: {n} photos"):
            encoder, trained_size = load_encoder(own, encoder_name, decoder, e3[f"encoder_{name}"])
            codes = predict_codes(encoder.to(device), batch["images"].to(device),
                                  trained_size or own.training.input_size)
            panels = reconstruction_panels(decoder, codes, batch["images"])
            plot_grid(panels, out[f"figure_{name}"], row_labels=labels, metadata=stamp,
                      title=f"E8: {variant_label(encoder_name, landmarks)} ({cfg['preset']} preset)")
        _stage.wrote(out[f"figure_{name}"])
        metrics[f"{name}_overlay_coverage"] = float(np.mean([(p["overlay"] != p["input"]).any(-1).mean() for p in panels]))
    _stage.write_json(out["metrics"], metrics)
    return metrics


if __name__ == "__main__":
    raise SystemExit(_stage.main(NAME, run, __doc__.splitlines()[0]))
