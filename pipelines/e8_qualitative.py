"""Stage `e8_qualitative` (paper Figs. 2, 4-6): for each E3 variant, a grid over the ibug68 photos:
input, the reconstruction rendered over it, shaded geometry, reflectance, and the estimated light on a
sphere.

Writes results/<preset>/figures/e8_<encoder>_<noland|land>.png and metrics/e8_qualitative.json.

    python -m pipelines.e8_qualitative --config config/ci.yaml
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mofa.config import results_dir
from pipelines import _stage, e2_e3_real, real_data

NAME = "e8_qualitative"
PARAMS = ("seed", "face_model", "camera", "light", "training", "e3", "e8")
NEEDS = ("real_data", "e2_e3_real")
SOURCES = ("config/schema.yaml", "mofa", "pipelines/_stage.py", "pipelines/tables.py", "pipelines/synthetic.py",
           "pipelines/e1_synthetic.py", "pipelines/real_data.py", "pipelines/e2_e3_real.py",
           "pipelines/e8_qualitative.py")
log = logging.getLogger(f"mofa.stage.{NAME}")


def per_encoder_outputs(cfg: Mapping) -> dict[str, Path]:
    """One figure per E3 variant."""
    return {f"figure_{e2_e3_real.variant_name(e, land)}":
            results_dir(cfg) / "figures" / f"e8_{e2_e3_real.variant_name(e, land)}.png" for e, land in e2_e3_real.variants(cfg)}


def outputs(cfg: Mapping) -> dict[str, Path]:
    return {**per_encoder_outputs(cfg), "metrics": results_dir(cfg) / "metrics" / "e8_qualitative.json"}


def run(cfg: dict) -> dict:
    from mofa.config import select_device
    from mofa.facemodel import build_face_model
    from mofa.figures.qualitative import plot_grid, reconstruction_panels
    from mofa.realdata.prepare import RealFaceSet
    from mofa.training.runs import load_encoder, training_decoder
    from mofa.training.trainer import predict_codes
    from pipelines.tables import figure_metadata

    out = outputs(cfg)
    photos = RealFaceSet(real_data.folder(cfg, "ibug68"), "all")
    n = len(photos) if cfg["e8"]["max_photos"] is None else min(len(photos), cfg["e8"]["max_photos"])
    batch = photos.batch(np.arange(n), "cpu")
    labels = [i.split("/", 1)[-1] for i in photos.ids[:n]]
    model, device = build_face_model(cfg), select_device(cfg)
    metrics, stamp = {"photos": n}, figure_metadata(cfg, NAME)
    for encoder_name, landmarks in e2_e3_real.variants(cfg):
        name = e2_e3_real.variant_name(encoder_name, landmarks)
        vcfg = e2_e3_real.variant_config(cfg, encoder_name)
        decoder = training_decoder(vcfg, model).to(device)
        with _stage.timed(f"{name}: {n} photos"):
            encoder, trained_size = load_encoder(vcfg, encoder_name, decoder,
                                                 e2_e3_real.run_dir(cfg, encoder_name, landmarks) / "encoder.pt")
            codes = predict_codes(encoder.to(device), batch["images"].to(device),
                                  trained_size or vcfg["training"]["input_size"])
            panels = reconstruction_panels(decoder, codes, batch["images"])
            plot_grid(panels, out[f"figure_{name}"], row_labels=labels, metadata=stamp,
                      title=f"E8: {e2_e3_real.variant_label(encoder_name, landmarks)} ({cfg['preset']} preset)")
        _stage.wrote(out[f"figure_{name}"])
        metrics[f"{name}_overlay_coverage"] = float(np.mean([(p["overlay"] != p["input"]).any(-1).mean() for p in panels]))
    _stage.write_json(out["metrics"], metrics)
    return metrics


if __name__ == "__main__":
    raise SystemExit(_stage.main(NAME, run, __doc__.splitlines()[0]))
