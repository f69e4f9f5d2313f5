"""Stage `e2_e3_real` (paper Figs. 8, 9, 11): each encoder trained on real photos (the AFLW2000
training split, mixed with synthetic images as e3.synthetic_fraction says) without and with the
landmark loss, and evaluated on the AFLW2000 eval split. E2 is the runs without landmarks against
iterations; E3 is the final errors of the four variants {AlexNet, VGG-Face} x {without, with landmark
loss}, plus the AFLW2000-3D benchmark (68-point NME per |yaw| bin) of each.

Writes, under results/<preset>/: runs/e3_<encoder>_<noland|land>/ (checkpoint, encoder weights,
metrics.csv, aflw2000_nme.csv per image), tables/e2_real_curves.csv + .md, figures/e2_real_curves.png,
tables/e3_per_image.csv + figures/e3_variants_spread.png (each eval image's errors per variant),
tables/e3_variants.csv + .md (beside the paper's 5.3 / 4.9 px without and 3.7 / 3.4 px with landmarks;
0.075 / 0.073 and 0.078 / 0.078), figures/e3_variants.png and metrics/e2_e3_real.json.

    python -m pipelines.e2_e3_real --config config/ci.yaml
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import torch

from mofa import io
from mofa.config import config_hash, select_device
from mofa.data.synthetic import SyntheticSet
from mofa.evaluation import aflw2000
from mofa.facemodel import build_face_model
from mofa.figures.curves import plot_curves
from mofa.figures.spread import plot_spread
from mofa.figures.variants import plot_variant_bars
from mofa.metrics import YAW_BINS
from mofa.paper import display_name, paper_counterpart, paper_value
from mofa.realdata.benchmark_crops import BenchmarkCrops
from mofa.realdata.crop_policy import CropPolicy
from mofa.realdata.prepare import RealFaceSet
from mofa.settings import Settings, encoder_config
from mofa.training.distributed import is_main
from mofa.training.evaluate import real_evaluator, real_per_image
from mofa.training.mixed import MixedSource
from mofa.training.runs import prepare_run_dir, run_training, training_decoder
from pipelines import _stage, paths, real_data
from pipelines.stages import STAGES
from pipelines.tables import data_hashes, figure_metadata, write_csv, write_table

STAGE = STAGES["e2_e3_real"]  # its params, sources and outputs (pipelines/stages.py)
NAME = STAGE.name
outputs, variants, variant_name, run_dir = STAGE.outputs, paths.e3_variants, paths.e3_variant_name, paths.e3_run_dir
METRICS = (("landmark_error", "px"), ("photometric_error", "rgb_distance"))
RUN_KEY = "run_key.json"
log = logging.getLogger(f"mofa.stage.{NAME}")


def variant_label(encoder: str, landmarks: bool) -> str:
    return f"{display_name(encoder)} {'with' if landmarks else 'without'} landmarks"


def variant_config(cfg: Mapping, encoder: str) -> dict:
    """The encoder's config (`encoder_config`) with training.batch_size, input_size and lr replaced by
    e3.<encoder>'s where set (lr_z keeps its ratio to lr)."""
    out = encoder_config(cfg, encoder)
    schedule, training = cfg["e3"][encoder], out["training"]
    for key in ("batch_size", "input_size"):
        if schedule[key] is not None:
            training[key] = schedule[key]
    if schedule["lr"] is not None:
        training["lr_z"] = training["lr_z"] * schedule["lr"] / training["lr"]
        training["lr"] = schedule["lr"]
    return out


def init_weights(cfg: Mapping, encoder: str) -> Path | None:
    """E1's trained weights when e3.init_from_e1 is on and E1 trained this encoder."""
    if cfg["e3"]["init_from_e1"] and encoder in cfg["e1"]["encoders"]:
        return STAGES["e1_synthetic"].outputs(cfg)[f"encoder_{encoder}"]
    return None


def run_key(cfg: Mapping, encoder: str, landmarks: bool, init: Path | None) -> dict:
    e3 = cfg["e3"]
    sections = {s: cfg[s] for s in STAGE.params if s not in ("e1", "e3")}
    kept = ("evaluations", "synthetic_fraction", "init_from_e1")  # what a run's training depends on
    sections["e3"] = {k: e3[k] for k in kept if k in e3} | {encoder: e3[encoder]}
    init_stamp = None
    if init is not None:  # by content: E1 resumed to the same weights leaves this run's key as it was
        init_stamp = {"path": str(init), "sha256": hashlib.sha256(init.read_bytes()).hexdigest()}
    return {"variant": variant_name(encoder, landmarks), "config": config_hash(sections), "init": init_stamp}


def variant_row(encoder: str, landmarks: bool, curves: pd.DataFrame, benchmark, vcfg: Mapping,
                init_description: str) -> dict:
    start, end = curves.iloc[0], curves.iloc[-1]
    iterations = int(end["iteration"])
    row = {"variant": variant_label(encoder, landmarks), "encoder": encoder, "landmark_loss": "yes" if landmarks else "no",
           "iterations": iterations, "batch_size": vcfg["training"]["batch_size"],
           "input_px": vcfg["training"]["input_size"], "lr": vcfg["training"]["lr"],
           "synthetic_fraction": vcfg["e3"]["synthetic_fraction"]}
    for metric, unit in METRICS:
        row[f"{metric}_start"] = start[f"{metric}_mean"]
        row[metric] = end[f"{metric}_mean"]
        row[f"{metric}_median"] = end[f"{metric}_median"]
        row[f"paper_{metric}"] = paper_value("E3", metric, paper_counterpart(encoder), "yes" if landmarks else "no")
    row["paper_encoder"] = _paper_column_note(encoder)
    for name in (*YAW_BINS, "mean"):
        row[f"nme_{name}_pct"] = 100 * benchmark.table[name]
    in_bins = benchmark.per_image[benchmark.per_image["yaw_bin"] != ""]
    row["nme_all_pct"] = 100 * float(in_bins["nme"].mean()) if len(in_bins) else float("nan")
    for name in YAW_BINS:
        row[f"n_{name}"] = benchmark.table[f"n_{name}"]
    row["seconds_per_iteration"] = float(end["seconds"]) / max(1, iterations)
    row["init"] = init_description
    return row


def run(cfg: dict) -> dict:
    e3, out, settings = cfg["e3"], outputs(cfg), Settings.from_config(cfg)
    model = build_face_model(settings.face_model)
    aflw = paths.real_folder(cfg, "aflw2000")
    train_real = RealFaceSet(aflw, "train")
    with _stage.timed("cropping every AFLW2000 eval-split image"):
        eval_real = BenchmarkCrops(real_data.split_samples(cfg, "aflw2000", "eval"), CropPolicy.from_settings(settings))
    mix = MixedSource(SyntheticSet(paths.synthetic_dir(cfg) / "train"), train_real, e3["synthetic_fraction"])
    n_eval = min(settings.training.eval_images, len(eval_real))
    log.info("training on %d synthetic + %d real images (synthetic share of a batch %.2f); evaluating on %d of %d "
             "AFLW2000 eval images (crop boxes %s)", len(mix.synthetic), len(train_real), mix.fraction, n_eval,
             len(eval_real), eval_real.summary["box_source"])

    rows, curves, spread = [], {}, []
    for encoder_name, landmarks in variants(cfg):
        name, vcfg = variant_name(encoder_name, landmarks), variant_config(cfg, encoder_name)
        own = Settings.from_config(vcfg)
        folder, init = run_dir(cfg, encoder_name, landmarks), init_weights(cfg, encoder_name)
        prepare_run_dir(folder, run_key(vcfg, encoder_name, landmarks, init) | {"data": data_hashes(cfg, NAME),
                                                                              "code": _stage.code_hash(STAGE.sources)})
        input_size = own.training.input_size
        evaluate = lambda decoder, device, size=input_size: real_evaluator(  # noqa: E731
            decoder, eval_real, n_eval, size, device)
        with _stage.timed(f"{name}: {e3[encoder_name]['iterations']} iterations"):
            table, encoder = run_training(own, folder, model, encoder_name, mix, evaluate,
                                          e3[encoder_name]["iterations"], e3["evaluations"], landmarks=landmarks,
                                          init_from=init)
        if not is_main():  # under torchrun rank 0 alone scores the encoder and writes the results
            continue
        init_description = f"from E1's weights ({init})" if init is not None else encoder.init_description
        decoder = training_decoder(own, model).to(select_device(own.device))
        with torch.no_grad(), _stage.timed(f"{name}: AFLW2000-3D benchmark on {len(eval_real)} images"):
            benchmark = aflw2000.score(eval_real, encoder, decoder, input_size)
        io.write_text(folder / "aflw2000_nme.csv", benchmark.per_image.to_csv(index=False, float_format="%.6g"))
        with _stage.timed(f"{name}: per-image errors on {len(eval_real)} images"):
            errors = real_per_image(decoder, encoder, eval_real, input_size)
        spread.append(pd.DataFrame({"variant": variant_label(encoder_name, landmarks), "id": eval_real.ids,
                                    "yaw_bin": benchmark.per_image["yaw_bin"], **errors}))
        log.info("%s:\n%s", name, benchmark.report())
        rows.append(variant_row(encoder_name, landmarks, table, benchmark, vcfg, init_description))
        curves[(encoder_name, landmarks)] = table
        del encoder

    if not is_main():
        return {}
    variants_table = pd.DataFrame(rows)
    write_table(variants_table, out["table"], out["table_md"], cfg,
                title=f"E3 (Figs. 8, 11): final errors on the AFLW2000 eval split ({n_eval} images; landmark error "
                      f"over 46 points in {cfg['camera']['image_size']} px crops against the ground truth) and the AFLW2000-3D NME "
                      f"(68 points, %, against the original pt3d_68 annotation; |yaw| bins 0-30, 30-60 and > 60 as 3DDFA's "
                      f"benchmark) of each variant on all {len(eval_real)} eval-split images of the folder (none dropped; crop boxes "
                      f"{', '.join(f'{k} {v}' for k, v in eval_real.summary['box_source'].items())})", stage=NAME)
    per_image = pd.concat(spread, ignore_index=True)
    write_csv(per_image, out["per_image"])
    plot_spread(per_image, "variant", [("landmark_error", "landmark error (px)"),
                                       ("photometric_error", "photometric error"), ("nme", "AFLW2000-3D NME")],
                out["spread_figure"], title=f"E3: per-image errors on the {len(eval_real)} AFLW2000 eval images "
                                            f"({cfg['preset']} preset)", metadata=figure_metadata(cfg, NAME))
    _stage.wrote(out["spread_figure"])
    plot_variant_bars(variants_table, [("landmark_error", "paper_landmark_error", "landmark error (px)"),
                                       ("photometric_error", "paper_photometric_error", "photometric error"),
                                       ("nme_all_pct", None, "AFLW2000-3D NME, all eval images (%)")],
                      out["figure"], title=f"E3: the four variants ({cfg['preset']} preset) beside the paper",
                      metadata=figure_metadata(cfg, NAME))
    _stage.wrote(out["figure"])

    no_landmarks = {display_name(e): curves[(e, False)] for e in e3["encoders"]}
    by_label = {display_name(e): e for e in e3["encoders"]}
    curves_table = pd.concat([frame.assign(encoder=name) for name, frame in no_landmarks.items()], ignore_index=True)
    keep = ["encoder", "iteration", "seconds", *[f"{m}_{s}" for m, _ in METRICS for s in ("mean", "median")],
            "nme_mean", "nme_median"]
    curves_table = curves_table[[c for c in keep if c in curves_table]]
    for metric, _ in METRICS:
        curves_table[f"paper_{metric}_end"] = [paper_value_e3(metric, by_label[name]) for name in curves_table.encoder]
    curves_table["paper_encoder"] = [_paper_column_note(by_label[name]) for name in curves_table.encoder]
    write_table(curves_table, out["curves_table"], out["curves_table_md"], cfg,
                title=f"E2 (Fig. 9): without landmarks, on real photos, against iterations; AFLW2000 eval split "
                      f"({n_eval} images); the paper's values are after 200k iterations", stage=NAME)
    plot_curves(no_landmarks, list(METRICS), out["curves_figure"],
                title=f"E2: trained without landmarks on real photos, AFLW2000 eval ({cfg['preset']} preset)",
                paper={m: (None, {name: paper_value_e3(m, by_label[name]) for name in no_landmarks}) for m, _ in METRICS},
                metadata=figure_metadata(cfg, NAME))
    _stage.wrote(out["curves_figure"])

    metrics = {}
    for row in rows:
        name = variant_name(row["encoder"], row["landmark_loss"] == "yes")
        for key in ("landmark_error", "photometric_error", "nme_mean_pct", "nme_all_pct", "seconds_per_iteration"):
            metrics[f"{name}_{key}"] = row[key]
    for encoder_name in e3["encoders"]:
        metrics[f"{encoder_name}_landmark_loss_lowers_landmark_error"] = bool(
            metrics[f"{encoder_name}_land_landmark_error"] < metrics[f"{encoder_name}_noland_landmark_error"])
    _stage.write_json(out["metrics"], metrics)
    return metrics


def paper_value_e3(metric: str, encoder: str, landmark_loss: str = "no") -> float | None:
    counterpart = paper_counterpart(encoder)
    return None if counterpart is None else paper_value("E3", metric, counterpart, landmark_loss)


def _paper_column_note(encoder: str) -> str:
    """What the paper_* columns of an encoder's row are: its own numbers, another network's, or none."""
    counterpart = paper_counterpart(encoder)
    if counterpart is None:
        return "none (not in the paper)"
    if counterpart == display_name(encoder):
        return counterpart
    return f"{counterpart}'s (the slot this encoder fills; it is not {counterpart})"

if __name__ == "__main__":
    raise SystemExit(_stage.main(NAME, run, __doc__.splitlines()[0], distributed=True))
