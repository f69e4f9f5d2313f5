"""Stage `e5_conv_autoencoder` (paper Fig. 12): the convolutional autoencoder (baselines/
conv_autoencoder.py: four 3x3 convolutions 64/96/128/256, a fully connected layer to the face model's
code size, four 4x4 deconvolutions 128/96/64/3) trained on the images the model-based autoencoder was
trained on (E1: the synthetic training set), against that model-based autoencoder (E1's encoder and the
analytic decoder) on the synthetic test set.

Both are scored at the conv autoencoder's resolution (e5.image_size; the model-based rendering and the
input are area-resampled to it) on the same pixels: those in the face region of both the ground truth
and the model-based estimate (the rendered face is the model-based output; the rest of its image is the
input). Photometric error (mofa.metrics) and SSIM there; only the model-based one also gives geometry,
reflectance and light, which the figure shows.

Writes, under results/<preset>/: runs/e5_conv_autoencoder/ (weights, loss per iteration),
tables/e5_conv_autoencoder.csv + .md, figures/e5_conv_autoencoder.png and metrics/e5_conv_autoencoder.json.

    python -m pipelines.e5_conv_autoencoder --config config/ci.yaml
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from baselines.compare import channels_last, face_masks, images_at, parameter_count, paste_region, region_at
from baselines.conv_autoencoder import ConvAutoencoder, train_conv_autoencoder
from baselines.learned_decoder import image_fidelity
from mofa import io
from mofa.config import config_hash, select_device
from mofa.data.synthetic import SyntheticSet
from mofa.errors import MofaError
from mofa.facemodel import build_face_model
from mofa.figures.qualitative import plot_grid, reconstruction_panels
from mofa.metrics import photometric_error, summarise
from mofa.paper import display_name
from mofa.settings import Settings
from mofa.training.evaluate import render_estimates
from mofa.training.runs import load_encoder, prepare_run_dir, training_decoder
from mofa.training.trainer import CHECKPOINT, predict_codes
from pipelines import _stage, paths
from pipelines.stages import STAGES
from pipelines.tables import data_hashes, figure_metadata, write_table

STAGE = STAGES["e5_conv_autoencoder"]  # its params, sources and outputs (pipelines/stages.py)
NAME = STAGE.name
outputs = STAGE.outputs
CONV_AE = "conv autoencoder"
COLUMNS = ("input", CONV_AE, "model-based", "shaded geometry", "reflectance", "light")
log = logging.getLogger(f"mofa.stage.{NAME}")


def model_based_name(encoder: str) -> str:
    """The method name of E1's `encoder` + the analytic decoder."""
    return f"model-based autoencoder ({display_name(encoder)})"


def scores(outputs_by_method: Mapping[str, np.ndarray], target: np.ndarray, region: np.ndarray) -> dict[str, dict]:
    """Per-image photometric error (mofa.metrics) and SSIM of each method's output on one region (SSIM's
    windows see the target outside it).

    outputs_by_method: {method: (B, S, S, 3)}; target: (B, S, S, 3); region: (B, S, S) bool
    -> {method: {"photometric_error": (B,), "ssim": (B,)}}."""
    return {method: {"photometric_error": photometric_error(out, target, region),
                     "ssim": image_fidelity(paste_region(out, target, region), target, region)["ssim"]}
            for method, out in outputs_by_method.items()}


def summary_rows(per_image: Mapping[str, dict], facts: Mapping[str, dict]) -> pd.DataFrame:
    """One row per method: mean, median and spread of each score (mofa.metrics.summarise), then the
    method's facts (training, size)."""
    rows = []
    for method, values in per_image.items():
        error, ssim = summarise(values["photometric_error"]), summarise(values["ssim"])
        rows.append({"method": method, "photometric_error": error["mean"], "photometric_error_median": error["median"],
                     "photometric_error_std": error["std"], "ssim": ssim["mean"], "images": error["n"],
                     **facts[method]})
    return pd.DataFrame(rows)


def run(cfg: dict) -> dict:
    settings = Settings.from_config(cfg)
    e5, out, device = cfg["e5"], outputs(cfg), select_device(settings.device)
    size = e5["image_size"]
    train_set = SyntheticSet(paths.synthetic_dir(cfg) / "train")
    test_set = SyntheticSet(paths.synthetic_dir(cfg) / "test")
    model = build_face_model(settings.face_model)
    decoder = training_decoder(settings, model)

    # The conv autoencoder, on the synthetic training images E1 trained on.
    try:
        autoencoder = ConvAutoencoder(decoder.layout, image_size=size, seed=cfg["seed"])
    except ValueError as exc:
        raise MofaError(f"e5.image_size: {exc}") from None
    # a checkpoint from another config, data or code is deleted: only the same run resumes
    prepare_run_dir(out["weights"].parent, {"config": config_hash({k: cfg[k] for k in STAGE.params}),
                                            "data": data_hashes(cfg, NAME), "code": _stage.code_hash(STAGE.sources)})
    with _stage.timed(f"conv autoencoder: {e5['iterations']} iterations, batch {e5['batch_size']}, {size} px") as timing:
        losses = train_conv_autoencoder(autoencoder, train_set, e5["iterations"], e5["batch_size"], e5["lr"],
                                        seed=cfg["seed"], loss=e5["loss"], device=device,
                                        checkpoint=out["weights"].parent / CHECKPOINT,
                                        checkpoint_every=settings.training.checkpoint_every)
    _stage.save_trained_network(autoencoder, losses, out["weights"], out["losses"], "conv autoencoder", e5["loss"])

    # The conv autoencoder and each E1 encoder + the analytic decoder on the synthetic test images.
    n = min(e5["eval_images"], len(test_set))
    batch = test_set.batch(np.arange(n), "cpu")
    codes, rendered, masks, encoders = {}, {}, [], {}
    e1 = STAGES["e1_synthetic"].outputs(cfg)  # its encoders' weights and curves
    with torch.no_grad(), _stage.timed(f"the autoencoders on {n} test images"):
        conv_out = torch.cat([autoencoder(images_at(batch["images"][i:i + 32], size).to(device)).cpu()
                              for i in range(0, n, 32)])
        for name in cfg["e1"]["encoders"]:
            method = model_based_name(name)
            encoder, trained_size = load_encoder(settings, name, decoder, e1[f"encoder_{name}"])
            codes[method] = predict_codes(encoder.to(device), batch["images"].to(device),
                                          trained_size or settings.training.input_size).cpu()
            image, mask = render_estimates(decoder, codes[method], batch["images"])
            rendered[method] = images_at(torch.from_numpy(image).permute(0, 3, 1, 2), size)
            masks.append(torch.from_numpy(mask))
            encoders[method] = (name, parameter_count(encoder))
        truth_mask = face_masks(decoder, batch["codes"])
    # The same pixels for every method: the ground truth's face and every model-based estimate's.
    region = region_at(truth_mask & torch.stack(masks).all(0), size)
    face_px = region_at(truth_mask, size).sum((1, 2)).clamp_min(1)
    target = channels_last(images_at(batch["images"], size))
    per_image = scores({CONV_AE: channels_last(conv_out), **{m: channels_last(r) for m, r in rendered.items()}},
                       target, region.numpy())

    shared = {"region_px": float(region.sum((1, 2)).float().mean()),
              "region_share_of_face": float((region.sum((1, 2)) / face_px).mean()), "image_px": size,
              "code_size": decoder.layout.size}
    facts = {CONV_AE: {"semantic_outputs": "none", "training_images": len(train_set),
                       "iterations": e5["iterations"], "batch_size": e5["batch_size"],
                       "training_seconds": timing["seconds"], "parameters": parameter_count(autoencoder), **shared}}
    for method, (name, parameters) in encoders.items():
        curves = io.read_csv(e1[f"curves_{name}"], ("iteration", "seconds"), "E1 training curves")
        facts[method] = {"semantic_outputs": "pose, shape, expression, reflectance, light",
                         "training_images": len(train_set), "iterations": int(curves["iteration"].iloc[-1]),
                         "batch_size": cfg["training"]["batch_size"],
                         "training_seconds": float(curves["seconds"].iloc[-1]), "parameters": parameters, **shared}
    table = summary_rows(per_image, facts)
    write_table(table, out["table"], out["table_md"], cfg, stage=NAME,
                title=f"E5 (Fig. 12): conv autoencoder against the model-based autoencoders (each E1 encoder + "
                      f"analytic decoder), synthetic test set ({n} images) at {size} px; photometric error and SSIM "
                      f"over the face pixels of the ground truth and of every model-based estimate (the paper shows "
                      f"this comparison qualitatively only)")

    # The grid shows the model-based autoencoder with the lowest photometric error.
    best = min(encoders, key=lambda m: float(np.nanmean(per_image[m]["photometric_error"])))
    rows = min(e5["figure_rows"], n)
    panels = reconstruction_panels(decoder, codes[best][:rows], batch["images"][:rows])
    conv_images = channels_last(conv_out[:rows])
    grid = [{"input": p["input"], CONV_AE: conv, "model-based": p["overlay"], "shaded geometry": p["shaded geometry"],
             "reflectance": p["reflectance"], "light": p["light"]} for p, conv in zip(panels, conv_images)]
    plot_grid(grid, out["figure"], columns=COLUMNS, row_labels=[f"test {i}" for i in range(rows)],
              metadata=figure_metadata(cfg, NAME),
              title=f"E5: conv autoencoder ({size} px) and {best} ({cfg['preset']} preset)")
    _stage.wrote(out["figure"])

    metrics = {"eval_images": n, "image_px": size, "region_share_of_face": shared["region_share_of_face"],
               "conv_autoencoder_loss_first10": float(np.mean(losses[:10])),
               "conv_autoencoder_loss_last10": float(np.mean(losses[-10:]))}
    for row in table.itertuples():
        key = "conv_autoencoder" if row.method == CONV_AE else f"model_based_{encoders[row.method][0]}"
        metrics[f"{key}_photometric_error"] = row.photometric_error
        metrics[f"{key}_ssim"] = row.ssim
        metrics[f"{key}_training_seconds"] = row.training_seconds
    metrics["model_based_lower_photometric_error"] = bool(
        metrics[f"model_based_{encoders[best][0]}_photometric_error"] < metrics["conv_autoencoder_photometric_error"])
    _stage.write_json(out["metrics"], metrics)
    return metrics


if __name__ == "__main__":
    raise SystemExit(_stage.main(NAME, run, __doc__.splitlines()[0]))
