"""Stage `e4_baselines` (paper Sec. 7, Figs. 7, 14): the optimisation baseline (Gauss-Newton on the
MoFA energy, 50 steps from the mean face, with and without landmarks; baselines/gauss_newton.py)
against the trained encoders (E1's synthetic run and E3's four variants), on the first images of the
synthetic test set (geometric, photometric, landmark error) and of the AFLW2000 eval split (landmark
error against the ground truth, photometric error, NME), with time per image on this machine.

The Gauss-Newton fits use what a user would have: the image, and for the landmark variant the
landmarks the data carries for training (synthetic: the true 2D landmarks; real photos: the automatic
detector's, with its confidences), never the ground truth the errors are measured against. The one
exception is the oracle row: the same loop, steps and regulariser fitted to the ground-truth 68 points
alone (photometric weight 0; points without ground truth left out), the floor any encoder on this face
model can reach, so the part of the landmark error and NME that is the face model's landmark
correspondence, not the encoder's.

Writes, under results/<preset>/: tables/e4_baselines.csv + .md (mean and median per dataset and
method, ms per image, the encoder's speed-up over Gauss-Newton beside the paper's 500 ms / 4 ms, and
how often the variant without landmarks ended worse than it started or far above the landmark variant),
tables/e4_per_image.csv, figures/e4_baselines.png, figures/e4_baselines_spread.png (each image's
errors per method) and metrics/e4_baselines.json.

    python -m pipelines.e4_baselines --config config/ci.yaml
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from baselines.gauss_newton import fit
from mofa.bench import device_name
from mofa.config import select_device
from mofa.data.synthetic import SyntheticSet
from mofa.facemodel import build_face_model
from mofa.figures.spread import plot_spread
from mofa.figures.variants import plot_variant_bars
from mofa.machine_load import LoadMonitor
from mofa.paper import display_name, paper_value
from mofa.realdata.prepare import RealFaceSet
from mofa.settings import Settings
from mofa.training.evaluate import real_metrics, synthetic_metrics
from mofa.training.runs import load_encoder, loss_weights, training_decoder
from mofa.training.trainer import predict_codes
from pipelines import _stage, paths
from pipelines.e2_e3_real import variant_label
from pipelines.stages import STAGES
from pipelines.tables import figure_metadata, write_csv, write_table

STAGE = STAGES["e4_baselines"]  # its params, sources and outputs (pipelines/stages.py)
NAME = STAGE.name
outputs = STAGE.outputs
GN_LAND, GN_NOLAND, MEAN_FACE = "Gauss-Newton with landmarks", "Gauss-Newton without landmarks", "mean face (start)"
ORACLE = "Oracle: fit to ground-truth landmarks"
FITS = (GN_LAND, GN_NOLAND, ORACLE)  # the Gauss-Newton rows, in table order
# The batch key of each dataset's ground-truth 68 landmarks (those the errors are measured against).
GROUND_TRUTH = {"synthetic": "landmarks", "real": "gt_landmarks"}
# The metric that decides whether a fit failed, per dataset: geometry where it is known.
FAILURE_METRIC = {"synthetic": "geometric_error", "real": "landmark_error"}
METRICS = {"synthetic": ("geometric_error", "photometric_error", "landmark_error", "rotation_error"),
           "real": ("landmark_error", "photometric_error", "nme")}
ALL_METRICS = ("geometric_error", "photometric_error", "landmark_error", "rotation_error", "nme")
SPREAD_LABELS = {"geometric_error": "geometric error (mm)", "photometric_error": "photometric error",
                 "landmark_error": "landmark error (px)", "rotation_error": "rotation error (deg)", "nme": "NME"}
# Images of each dataset fitted one at a time as well (Gauss-Newton with landmarks), to time the fit
# unbatched beside the batched fit's time per image (all of them would double the stage's fitting time).
SINGLE_FIT_IMAGES = 2
log = logging.getLogger(f"mofa.stage.{NAME}")


def trained_encoders(cfg: Mapping) -> list[tuple[str, str, Path]]:
    """(label, encoder name, weights) of every encoder the earlier stages trained."""
    e1, e3 = STAGES["e1_synthetic"].outputs(cfg), STAGES["e2_e3_real"].outputs(cfg)
    out = [(f"E1 {display_name(name)} (synthetic, no landmarks)", name, e1[f"encoder_{name}"])
           for name in cfg["e1"]["encoders"]]
    for encoder, landmarks in paths.e3_variants(cfg):
        out.append((f"E3 {variant_label(encoder, landmarks)}", encoder,
                    e3[f"encoder_{paths.e3_variant_name(encoder, landmarks)}"]))
    return out


def failure_fraction(start: np.ndarray, no_land: np.ndarray, land: np.ndarray, factor: float) -> dict[str, float]:
    """Per-image errors (B,) of the mean face, the no-landmark fit and the landmark fit -> the fraction
    of images where the no-landmark fit ended worse than it started, ended above `factor` times the
    landmark fit's error, and either. NaN entries (no ground truth) are left out."""
    ok = np.isfinite(start) & np.isfinite(no_land) & np.isfinite(land)
    if not ok.any():
        return {"worse_than_start": float("nan"), "far_above_landmark_fit": float("nan"), "failed": float("nan")}
    worse, far = no_land[ok] > start[ok], no_land[ok] > factor * land[ok]
    return {"worse_than_start": float(worse.mean()), "far_above_landmark_fit": float(far.mean()),
            "failed": float((worse | far).mean())}


def time_encoder(encoder: torch.nn.Module, images: torch.Tensor, input_size: int, repeats: int) -> float:
    """Seconds per image of the encoder alone at batch 1 (the paper's per-image figure), after a warm-up."""
    predict_codes(encoder, images[:1], input_size)
    start = time.perf_counter()
    for _ in range(repeats):
        for image in images:
            predict_codes(encoder, image[None], input_size)
    if images.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / (repeats * len(images))


def run(cfg: dict) -> dict:
    settings = Settings.from_config(cfg)
    e4, out, device = cfg["e4"], outputs(cfg), select_device(settings.device)
    torch.manual_seed(settings.seed)
    model = build_face_model(settings.face_model)
    decoder = training_decoder(settings, model).to(device)
    test_set = SyntheticSet(paths.synthetic_dir(cfg) / "test")
    eval_set = RealFaceSet(paths.real_folder(cfg, "aflw2000"), "eval")
    datasets = {
        "synthetic": (test_set.batch(np.arange(min(e4["synthetic_images"], len(test_set))), "cpu"), synthetic_metrics),
        "real": (eval_set.batch(np.arange(min(e4["real_images"], len(eval_set))), "cpu"), real_metrics)}
    encoders = [(label, name, *load_encoder(settings, name, decoder, path)) for label, name, path in trained_encoders(cfg)]

    per_image, seconds = [], {}
    with LoadMonitor() as load:  # the fits and the encoders claim every core, as E7 does
        for dataset, (batch, score) in datasets.items():
            _fit_and_time(cfg, settings, decoder, encoders, dataset, batch, score, per_image, seconds)
    load_columns = load.summary()
    log.info("machine load around the timings: %s", load_columns)

    frame = pd.concat(per_image, ignore_index=True)
    table = summary_table(frame, seconds)
    for column, value in load_columns.items():
        table[column] = value
    table["paper_ms_per_image"] = [paper_value("E4", "fit_time") if m.startswith("Gauss-Newton") else
                                   (paper_value("E7", "inference_time", "AlexNet") if "AlexNet" in m else
                                    paper_value("E7", "inference_time", "VGG-Face") if "VGG-Face" in m else None)
                                   for m in table.method]
    write_table(table, out["table"], out["table_md"], cfg,
                title=f"E4 (Figs. 7, 14): Gauss-Newton ({e4['steps']} steps from the mean face) against the trained "
                      f"encoders, and the oracle (the same fit to the ground-truth landmarks alone); synthetic test "
                      f"set ({len(datasets['synthetic'][0]['images'])} images) and AFLW2000 "
                      f"eval split ({len(datasets['real'][0]['images'])} images); time per image on "
                      f"{_device_name(device)} (paper: ~500 ms optimisation vs 4 ms AlexNet on a TitanX); 'far above' = more than "
                      f"{e4['far_above_factor']:g}x the landmark fit's error; the fits batched "
                      f"{e4['fit_batch']} images at a time (Gauss-Newton with landmarks also one at a time on the first "
                      f"{SINGLE_FIT_IMAGES} images), the encoders at batch 1"
                      + (f"; {load.note()}" if load.note() else ""), stage=NAME)
    write_csv(frame, out["per_image"])
    wide = figure_table(table)
    plot_variant_bars(wide, [("synthetic_geometric_error", None, "synthetic geometric error (mm)"),
                             ("real_landmark_error", None, "real landmark error (px)"),
                             ("ms_per_image", "paper_ms_per_image", "ms per image (log scale)")],
                      out["figure"], title=f"E4: optimisation baseline vs encoders ({cfg['preset']} preset)",
                      label="method", log_panels=("ms_per_image",), metadata=figure_metadata(cfg, NAME))
    _stage.wrote(out["figure"])
    plot_spread(frame, "method", [(m, SPREAD_LABELS[m]) for m in ALL_METRICS], out["spread_figure"], facet="dataset",
                title=f"E4: per-image errors per method, synthetic test and AFLW2000 eval ({cfg['preset']} preset)",
                metadata=figure_metadata(cfg, NAME))
    _stage.wrote(out["spread_figure"])
    metrics = headline(table)
    _stage.write_json(out["metrics"], metrics)
    log.info("Gauss-Newton with landmarks %.0f ms/image vs the fastest encoder %.2f ms/image: %.0fx; synthetic "
             "geometric error %.2f mm (Gauss-Newton) vs %.2f mm (best E1 encoder)", metrics["gauss_newton_ms_per_image"],
             metrics["fastest_encoder_ms_per_image"], metrics["speedup"],
             metrics["gauss_newton_synthetic_geometric_error"], metrics["e1_encoder_synthetic_geometric_error"])
    log.info("oracle (fit to the ground-truth landmarks): landmark error %.2f px synthetic, %.2f px real, NME %.4f",
             metrics["oracle_synthetic_landmark_error"], metrics["oracle_real_landmark_error"],
             metrics["oracle_real_nme"])
    return metrics


def _fit_and_time(cfg: Mapping, settings: Settings, decoder, encoders: list, dataset: str, batch: dict, score, per_image: list,
                  seconds: dict) -> None:
    """One dataset's Gauss-Newton fits (batched, and the first SINGLE_FIT_IMAGES images one at a time with
    landmarks, for the time per image unbatched) and trained encoders (timed at batch 1): appends the
    per-image errors to per_image and the seconds per image to seconds[(dataset, method)]."""
    e4, device = cfg["e4"], decoder.mean_shape.device
    images = batch["images"].to(device)
    n = len(images)
    log.info("%s: %d images", dataset, n)

    def record(method: str, codes: torch.Tensor, secs: float) -> dict[str, np.ndarray]:
        errors = score(decoder, codes.detach().float().cpu(), batch)
        per_image.append(pd.DataFrame({"dataset": dataset, "method": method, "image": np.arange(n),
                                       **{m: errors[m] for m in METRICS[dataset]}}))
        seconds[(dataset, method)] = secs
        return errors

    start = record(MEAN_FACE, torch.zeros(n, decoder.code_size), 0.0)
    fits = {}
    # The baseline minimises the paper's energy: a vertex that turns away costs nothing there (its
    # least-squares form has no term for loss.invisible_cost, an encoder-training remedy).
    with_landmarks = dataclasses.replace(loss_weights(settings, True), invisible_cost=0.0)
    inputs = {GN_LAND: (batch["landmarks"], batch.get("landmark_confidence"), with_landmarks),
              GN_NOLAND: (None, None, dataclasses.replace(with_landmarks, land=0.0)),
              ORACLE: (batch[GROUND_TRUTH[dataset]], None, dataclasses.replace(with_landmarks, photo=0.0))}
    for method in FITS:
        landmarks, confidences, weights = inputs[method]
        codes, secs = [], []
        with _stage.timed(f"{dataset}: {method}, {e4['steps']} steps, {n} images"):
            for first in range(0, n, e4["fit_batch"]):
                part = slice(first, first + e4["fit_batch"])
                result = fit(decoder, images[part], None if landmarks is None else landmarks[part].to(device),
                             None if confidences is None else confidences[part].to(device), weights,
                             steps=e4["steps"])  # fit gives NaN ground-truth points confidence 0
                codes.append(result.codes)
                secs.append(result.seconds_per_image * len(result.codes))
        fits[method] = record(method, torch.cat(codes), sum(secs) / n)
    landmarks, confidences, weights = inputs[GN_LAND]
    singles = [fit(decoder, images[i:i + 1], landmarks[i:i + 1].to(device),
                   None if confidences is None else confidences[i:i + 1].to(device), weights,
                   steps=e4["steps"]).seconds_per_image for i in range(min(SINGLE_FIT_IMAGES, n))]
    seconds[(dataset, "single_fit")] = sum(singles) / len(singles)
    for label, name, encoder, input_size in encoders:
        size = input_size or settings.training.input_size
        with torch.no_grad():
            codes = predict_codes(encoder, images, size)
            secs = time_encoder(encoder, images, size, e4["timing_repeats"])
        record(label, codes, secs)
    metric = FAILURE_METRIC[dataset]
    failures = failure_fraction(start[metric], fits[GN_NOLAND][metric], fits[GN_LAND][metric],
                                e4["far_above_factor"])
    log.info("%s: without landmarks, %s", dataset, failures)
    seconds[(dataset, "failures")] = failures


def summary_table(frame: pd.DataFrame, seconds: Mapping) -> pd.DataFrame:
    """Per (dataset, method): mean and median of each metric, ms per image (for Gauss-Newton with
    landmarks also fitted one image at a time, on the first SINGLE_FIT_IMAGES images), an encoder's
    speed-up over Gauss-Newton with landmarks (batched), and for the no-landmark fit the failure fractions."""
    rows = []
    for (dataset, method), group in frame.groupby(["dataset", "method"], sort=False):
        row = {"dataset": dataset, "method": method, "images": len(group)}
        for metric in ALL_METRICS:
            if metric not in METRICS[dataset]:
                row[f"{metric}_mean"] = row[f"{metric}_median"] = np.nan
                continue
            values = group[metric].to_numpy(float)
            row[f"{metric}_mean"] = np.nanmean(values) if np.isfinite(values).any() else np.nan
            row[f"{metric}_median"] = np.nanmedian(values) if np.isfinite(values).any() else np.nan
        ms = 1000 * seconds[(dataset, method)]
        row["ms_per_image"] = ms if method != MEAN_FACE else np.nan
        row[f"ms_per_image_one_at_a_time_first_{SINGLE_FIT_IMAGES}"] = \
            1000 * seconds[(dataset, "single_fit")] if method == GN_LAND and (dataset, "single_fit") in seconds else np.nan
        gn = 1000 * seconds[(dataset, GN_LAND)]
        row["speedup_over_gauss_newton"] = gn / ms if method not in (MEAN_FACE, *FITS) and ms > 0 else np.nan
        failures = seconds[(dataset, "failures")] if method == GN_NOLAND else {}
        row["fraction_worse_than_start"] = failures.get("worse_than_start", np.nan)
        row["fraction_far_above_landmark_fit"] = failures.get("far_above_landmark_fit", np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def figure_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per method: synthetic geometric error, real landmark error, ms per image (mean over datasets)."""
    rows = []
    for method, group in table.groupby("method", sort=False):
        by = group.set_index("dataset")
        rows.append({"method": method,
                     "synthetic_geometric_error": by["geometric_error_mean"].get("synthetic", np.nan),
                     "real_landmark_error": by["landmark_error_mean"].get("real", np.nan),
                     "ms_per_image": group["ms_per_image"].mean(),
                     "paper_ms_per_image": group["paper_ms_per_image"].iloc[0]})
    return pd.DataFrame(rows)


def headline(table: pd.DataFrame) -> dict:
    """The numbers the issue asks to print: speed-up and synthetic geometric error of both sides, and the
    oracle's landmark error (both sets) and NME (real), the floor of the face model's landmarks."""
    syn = table[table.dataset == "synthetic"].set_index("method")
    encoders = table[table.method.str.startswith("E")]
    fastest = encoders.groupby("method")["ms_per_image"].mean().min()
    gn_ms = table[table.method == GN_LAND]["ms_per_image"].mean()
    e1 = [m for m in syn.index if m.startswith("E1")]
    best_e1 = min(e1, key=lambda m: syn.loc[m, "geometric_error_mean"])
    single = table[table.method == GN_LAND][f"ms_per_image_one_at_a_time_first_{SINGLE_FIT_IMAGES}"].mean()
    out = {"gauss_newton_ms_per_image": float(gn_ms), "gauss_newton_one_at_a_time_ms_per_image": float(single), "fastest_encoder_ms_per_image": float(fastest),
           "speedup": float(gn_ms / fastest),
           "gauss_newton_synthetic_geometric_error": float(syn.loc[GN_LAND, "geometric_error_mean"]),
           "gauss_newton_no_landmarks_synthetic_geometric_error": float(syn.loc[GN_NOLAND, "geometric_error_mean"]),
           "mean_face_synthetic_geometric_error": float(syn.loc[MEAN_FACE, "geometric_error_mean"]),
           "e1_encoder_synthetic_geometric_error": float(syn.loc[best_e1, "geometric_error_mean"]),
           "e1_best_encoder": best_e1}
    for dataset in ("synthetic", "real"):
        row = table[(table.dataset == dataset) & (table.method == GN_NOLAND)].iloc[0]
        out[f"{dataset}_no_landmark_fraction_worse_than_start"] = float(row["fraction_worse_than_start"])
        oracle = table[(table.dataset == dataset) & (table.method == ORACLE)].iloc[0]
        out[f"oracle_{dataset}_landmark_error"] = float(oracle["landmark_error_mean"])
    out["oracle_real_nme"] = float(table[(table.dataset == "real") & (table.method == ORACLE)].iloc[0]["nme_mean"])
    return out


def _device_name(device) -> str:
    return device_name(torch.device(device))


if __name__ == "__main__":
    raise SystemExit(_stage.main(NAME, run, __doc__.splitlines()[0]))
