"""Stage `e6_learned_decoder` (paper Fig. 13): the learned decoder (baselines/learned_decoder.py: the
code -> image network of the conv autoencoder's decoder half) trained on synthetic images of the face
model (the synthetic training set: codes drawn from the synthetic code distribution; the loss over each
image's face region, since the backgrounds are random and cannot be told from the code), against the
analytic decoder (mofa.decoder + the Open3D renderer) on the held-out codes of the synthetic test set.

Both are scored at the learned decoder's resolution (e6.image_size; the ground truth and the analytic
rendering are area-resampled to it) over the face region of the true code: L1, PSNR and SSIM
(baselines.learned_decoder.image_fidelity; SSIM's windows see the ground truth outside the region). The synthetic images were made by the analytic decoder, so
its error is the floor left by the images' pixel noise and 8-bit rounding.

Writes, under results/<preset>/: runs/e6_learned_decoder/ (weights, loss per iteration),
tables/e6_learned_decoder.csv + .md, figures/e6_learned_decoder.png and metrics/e6_learned_decoder.json.

    python -m pipelines.e6_learned_decoder --config config/ci.yaml
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from baselines.compare import (WithFaceRegion, channels_last, face_masks, images_at, parameter_count, paste_region,
                               region_at)
from baselines.learned_decoder import LearnedDecoder, image_fidelity, train_learned_decoder
from mofa.config import config_hash, select_device
from mofa.data.synthetic import SyntheticSet
from mofa.errors import MofaError
from mofa.facemodel import build_face_model
from mofa.figures.qualitative import BACKGROUND, plot_grid
from mofa.metrics import summarise
from mofa.settings import Settings
from mofa.training.evaluate import render_estimates
from mofa.training.runs import prepare_run_dir, training_decoder
from mofa.training.trainer import CHECKPOINT
from pipelines import _stage, paths
from pipelines.stages import STAGES
from pipelines.tables import data_hashes, figure_metadata, write_table

STAGE = STAGES["e6_learned_decoder"]  # its params, sources and outputs (pipelines/stages.py)
NAME = STAGE.name
outputs = STAGE.outputs
ANALYTIC, LEARNED = "analytic decoder", "learned decoder"
COLUMNS = ("ground truth", ANALYTIC, LEARNED)
FIDELITY = ("l1", "psnr", "ssim")
log = logging.getLogger(f"mofa.stage.{NAME}")


def fidelity_rows(per_image: Mapping[str, Mapping[str, np.ndarray]], facts: Mapping[str, dict]) -> pd.DataFrame:
    """One row per decoder: mean and median of L1, PSNR (finite values) and SSIM over the images
    (mofa.metrics.summarise), then the decoder's facts (training, size)."""
    rows = []
    for method, values in per_image.items():
        row: dict = {"method": method}
        for name in FIDELITY:
            summary = summarise(values[name])
            row[name], row[f"{name}_median"] = summary["mean"], summary["median"]
        row["images"] = summarise(values["l1"])["n"]
        rows.append({**row, **facts[method]})
    return pd.DataFrame(rows)


def run(cfg: dict) -> dict:
    settings = Settings.from_config(cfg)
    e6, out, device = cfg["e6"], outputs(cfg), select_device(settings.device)
    size = e6["image_size"]
    train_set = SyntheticSet(paths.synthetic_dir(cfg) / "train")
    test_set = SyntheticSet(paths.synthetic_dir(cfg) / "test")
    decoder = training_decoder(settings, build_face_model(settings.face_model))
    if train_set.manifest["code_layout"] != decoder.layout.sizes:
        raise MofaError(f"{train_set.folder}: codes of layout {train_set.manifest['code_layout']}, the face model's "
                        f"is {decoder.layout.sizes}; run the synthetic stage again")

    # The learned decoder, on the training codes and the face region of each training image.
    n_train = len(train_set) if e6["train_images"] is None else min(e6["train_images"], len(train_set))
    # a checkpoint from another config, data or code is deleted: only the same run resumes
    prepare_run_dir(out["weights"].parent, {"config": config_hash({k: cfg[k] for k in STAGE.params}),
                                            "data": data_hashes(cfg, NAME), "code": _stage.code_hash(STAGE.sources)})
    with _stage.timed(f"face regions of {n_train} training images"):
        codes = torch.from_numpy(np.array(train_set.arrays["codes"][:n_train]))
        source = WithFaceRegion(train_set, region_at(face_masks(decoder, codes), size))
    try:
        learned = LearnedDecoder(decoder.layout, image_size=size, seed=cfg["seed"])
    except ValueError as exc:
        raise MofaError(f"e6.image_size: {exc}") from None
    with _stage.timed(f"learned decoder: {e6['iterations']} iterations, batch {e6['batch_size']}, {size} px") as timing:
        losses = train_learned_decoder(learned, source, e6["iterations"], e6["batch_size"], e6["lr"],
                                       seed=cfg["seed"], loss=e6["loss"], device=device,
                                       checkpoint=out["weights"].parent / CHECKPOINT,
                                       checkpoint_every=settings.training.checkpoint_every)
    _stage.save_trained_network(learned, losses, out["weights"], out["losses"], "learned decoder",
                                f"{e6['loss']} over the face")

    # Both decoders on the held-out codes.
    n = min(e6["eval_images"], len(test_set))
    batch = test_set.batch(np.arange(n), "cpu")
    camera_px = decoder.camera.image_size
    with torch.no_grad(), _stage.timed(f"both decoders on {n} test codes"):
        learned_out = torch.cat([learned(batch["codes"][i:i + 32].to(device)).cpu() for i in range(0, n, 32)])
        white = torch.full((n, 3, camera_px, camera_px), BACKGROUND)
        analytic, mask = render_estimates(decoder, batch["codes"], white)
    analytic = torch.from_numpy(analytic).permute(0, 3, 1, 2)
    region = region_at(torch.from_numpy(mask), size).numpy()
    truth = channels_last(images_at(batch["images"], size))
    per_image = {method: image_fidelity(paste_region(channels_last(output), truth, region), truth, region)
                 for method, output in ((ANALYTIC, images_at(analytic, size)), (LEARNED, learned_out))}

    shared = {"region_px": float(region.sum((1, 2)).mean()), "image_px": size, "code_size": decoder.layout.size}
    facts = {ANALYTIC: {"training_images": 0, "iterations": 0, "batch_size": 0, "training_seconds": 0.0,
                        "learned_parameters": 0, **shared},
             LEARNED: {"training_images": n_train, "iterations": e6["iterations"], "batch_size": e6["batch_size"],
                       "training_seconds": timing["seconds"], "learned_parameters": parameter_count(learned), **shared}}
    table = fidelity_rows(per_image, facts)
    write_table(table, out["table"], out["table_md"], cfg, stage=NAME,
                title=f"E6 (Fig. 13): learned decoder against the analytic decoder on held-out codes (synthetic test "
                      f"set, {n} codes) at {size} px; L1, PSNR (dB) and SSIM over the face region of the true code "
                      f"(the analytic decoder rendered the ground truth: its error is the images' noise and rounding; "
                      f"the paper shows this comparison qualitatively only)")

    rows = min(e6["figure_rows"], n)
    grid = [{"ground truth": gt, ANALYTIC: rendered, LEARNED: output} for gt, rendered, output in
            zip(channels_last(batch["images"][:rows]), channels_last(analytic[:rows]), channels_last(learned_out[:rows]))]
    plot_grid(grid, out["figure"], columns=COLUMNS, row_labels=[f"test {i}" for i in range(rows)],
              metadata=figure_metadata(cfg, NAME),
              title=f"E6: analytic and learned decoder ({size} px), {cfg['preset']} preset")
    _stage.wrote(out["figure"])

    metrics = {"eval_images": n, "training_images": n_train, "image_px": size,
               "learned_loss_first10": float(np.mean(losses[:10])), "learned_loss_last10": float(np.mean(losses[-10:]))}
    for row in table.itertuples():
        key = "analytic" if row.method == ANALYTIC else "learned"
        for name in FIDELITY:
            metrics[f"{key}_{name}"] = getattr(row, name)
    metrics["learned_training_seconds"] = timing["seconds"]
    metrics["analytic_higher_fidelity"] = bool(metrics["analytic_psnr"] > metrics["learned_psnr"]
                                               and metrics["analytic_ssim"] > metrics["learned_ssim"])
    _stage.write_json(out["metrics"], metrics)
    return metrics


if __name__ == "__main__":
    raise SystemExit(_stage.main(NAME, run, __doc__.splitlines()[0]))
