"""Stage `e1_synthetic` (paper Fig. 10): AlexNet trained without landmarks on the synthetic training
set; geometric, photometric and landmark error on the synthetic test set against iterations.

Writes, under results/<preset>/: runs/e1_alexnet/ (checkpoint, encoder weights, metrics.csv),
tables/e1_synthetic.csv + .md (start and end beside the paper's 21.6 -> 4.5 mm, 0.33 -> 0.05,
31.6 -> 3.9 px), figures/e1_synthetic_curves.png and metrics/e1_synthetic.json.

    python -m pipelines.e1_synthetic --config config/ci.yaml
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from mofa.config import config_hash, results_dir
from pipelines import _stage, synthetic

NAME = "e1_synthetic"
PARAMS = ("seed", "face_model", "camera", "light", "synthetic", "loss", "training", "encoders", "e1")
NEEDS = ("synthetic",)  # stages whose outputs this one reads
SOURCES = ("config/schema.yaml", "mofa", "pipelines/_stage.py", "pipelines/tables.py", "pipelines/e1_synthetic.py")
METRICS = (("geometric_error", "mm"), ("photometric_error", "rgb_distance"), ("landmark_error", "px"),
           ("rotation_error", "deg"))  # the paper reports the first three; rotation shows a pose collapse
log = logging.getLogger(f"mofa.stage.{NAME}")


def run_dir(cfg: Mapping) -> Path:
    return results_dir(cfg) / "runs" / f"e1_{cfg['e1']['encoder']}"


def outputs(cfg: Mapping) -> dict[str, Path]:
    return {"encoder": run_dir(cfg) / "encoder.pt", "curves": run_dir(cfg) / "metrics.csv",
            **_stage.result_files(cfg, NAME, figure=False),
            "figure": results_dir(cfg) / "figures" / "e1_synthetic_curves.png"}


def summary_table(curves: pd.DataFrame, encoder: str) -> pd.DataFrame:
    """Start and end of each metric (mean over the test images) beside the paper's."""
    from mofa.paper import paper_value
    rows = []
    for metric, unit in METRICS:
        start, end = curves.iloc[0], curves.iloc[-1]
        rows.append({"metric": metric, "unit": unit,
                     "ours_start": start[f"{metric}_mean"], "ours_end": end[f"{metric}_mean"],
                     "ours_end_median": end[f"{metric}_median"],
                     "ours_end_over_start": end[f"{metric}_mean"] / start[f"{metric}_mean"],
                     "paper_start": paper_value("E1", f"{metric}_start"), "paper_end": paper_value("E1", f"{metric}_end"),
                     "iterations": int(end["iteration"]), "encoder": encoder})
    return pd.DataFrame(rows)


def schedule_note(cfg: Mapping, short: bool = False) -> str:
    """What the table title (or, short, the figure title) says when E1 is not landmark-free from the
    first iteration, trains the light alone first, fits each image's light in the loss, or holds code
    entries at the start (read from the same `Schedule` the run trains with)."""
    from mofa.training.trainer import Schedule

    schedule, its = Schedule.from_config(cfg["e1"]), cfg["e1"]["iterations"]
    note = ""
    if schedule.fit_light:
        note += (", each image's own best light in the loss" if short else
                 "; the photometric term used each image's own best light (solved, not the encoder's), "
                 "which the encoder's light output learned to predict")
    if held := schedule.held_steps(its):
        note += (f", {'/'.join(schedule.hold)} held for {held} its" if short else
                 f"; {', '.join(schedule.hold)} got no gradient (kept the mean face's) for the first {held} iterations")
    if light := schedule.light_only_steps(its):
        note += (f", light alone for {light} its" if short else
                 f"; only the light trained for the first {light} iterations")
    if (f := schedule.land_until) is not None:
        note += (f", landmark warm-up over {f:.0%} of the run" if short else
                 f"; NOT the paper's landmark-free run: landmark warm-up, the landmark term falls from "
                 f"{cfg['loss']['land']:g} to 0 over the first {round(f * its)} iterations")
    return note


def run(cfg: dict) -> dict:
    from mofa.data.synthetic import SyntheticSet
    from mofa.facemodel import build_face_model
    from mofa.figures.curves import plot_curves
    from mofa.training.evaluate import synthetic_evaluator
    from mofa.training.runs import prepare_run_dir, run_training
    from mofa.training.trainer import Schedule
    from pipelines.tables import figure_metadata, write_table

    e1, out = cfg["e1"], outputs(cfg)
    model = build_face_model(cfg)
    train_set = SyntheticSet(synthetic.data_dir(cfg) / "train")
    test_set = SyntheticSet(synthetic.data_dir(cfg) / "test")
    evaluate = lambda decoder, device: synthetic_evaluator(  # noqa: E731
        decoder, test_set, cfg["training"]["eval_images"], cfg["training"]["input_size"], device)
    prepare_run_dir(run_dir(cfg), {"config": config_hash({s: cfg[s] for s in PARAMS}),
                                   "data": [train_set.manifest, test_set.manifest]})
    curves, encoder = run_training(cfg, run_dir(cfg), model, e1["encoder"], train_set, evaluate,
                                   e1["iterations"], e1["evaluations"], landmarks=False,
                                   schedule=Schedule.from_config(e1))
    table = summary_table(curves, e1["encoder"])
    write_table(table, out["table"], out["table_md"], cfg,
                title=f"E1 (Fig. 10): {e1['encoder']} without landmarks, synthetic test set "
                      f"({min(cfg['training']['eval_images'], len(test_set))} images); {encoder.init_description}"
                      + schedule_note(cfg), stage=NAME)
    plot_curves(curves, [(m, u) for m, u in METRICS], out["figure"],
                title=f"E1: {e1['encoder']} on synthetic data ({cfg['preset']} preset{schedule_note(cfg, short=True)})",
                paper={m: (t.paper_start, t.paper_end) for m, t in zip([m for m, _ in METRICS], table.itertuples())},
                metadata=figure_metadata(cfg, NAME))
    _stage.wrote(out["figure"])
    metrics = {f"{r.metric}_{k}": getattr(r, k) for r in table.itertuples() for k in ("ours_start", "ours_end")}
    metrics["encoder_init"] = encoder.init_description
    _stage.write_json(out["metrics"], metrics)
    return metrics


if __name__ == "__main__":
    raise SystemExit(_stage.main(NAME, run, __doc__.splitlines()[0]))
