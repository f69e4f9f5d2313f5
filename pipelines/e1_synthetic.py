"""Stage `e1_synthetic` (paper Fig. 10): each encoder of e1.encoders trained without landmarks on the
synthetic training set; geometric, photometric and landmark error on the synthetic test set against
iterations.

Writes, under results/<preset>/: runs/e1_<encoder>/ (checkpoint, encoder weights, metrics.csv),
tables/e1_synthetic_curves.csv (every run's curves, an `encoder` column),
tables/e1_synthetic.csv + .md (start and end beside the paper's 21.6 -> 4.5 mm, 0.33 -> 0.05,
31.6 -> 3.9 px), tables/e1_per_image.csv + figures/e1_synthetic_spread.png (each test image's errors at
the end), figures/e1_synthetic_curves.png and metrics/e1_synthetic.json.

    python -m pipelines.e1_synthetic --config config/ci.yaml
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

import pandas as pd

from mofa.config import config_hash, select_device
from mofa.data.synthetic import SyntheticSet
from mofa.facemodel import build_face_model
from mofa.figures.curves import plot_curves
from mofa.figures.spread import plot_spread
from mofa.paper import display_name, paper_value
from mofa.settings import Settings
from mofa.training.distributed import is_main
from mofa.training.evaluate import synthetic_evaluator, synthetic_per_image
from mofa.training.runs import prepare_run_dir, run_training, training_decoder
from mofa.training.trainer import Schedule
from pipelines import _stage, paths
from pipelines.stages import STAGES
from pipelines.tables import figure_metadata, write_csv, write_table

STAGE = STAGES["e1_synthetic"]  # its params, sources and outputs (pipelines/stages.py)
NAME = STAGE.name
outputs, run_dir = STAGE.outputs, paths.e1_run_dir
METRICS = (("geometric_error", "mm"), ("photometric_error", "rgb_distance"), ("landmark_error", "px"),
           ("rotation_error", "deg"))  # the paper reports the first three; rotation shows a pose collapse
log = logging.getLogger(f"mofa.stage.{NAME}")


def section(cfg: Mapping, encoder: str) -> dict:
    """E1's section for one encoder: e1's keys, replaced by those e1.<encoder> sets (not null)."""
    e1 = cfg["e1"]
    own = {k: v for k, v in e1.get(encoder, {}).items() if v is not None}
    return {k: v for k, v in e1.items() if k not in e1["encoders"]} | own


def summary_table(curves: pd.DataFrame, encoder: str) -> pd.DataFrame:
    """Start and end of each metric (mean over the test images) beside the paper's."""
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


def schedule_note(cfg: Mapping, encoder: str, short: bool = False) -> str:
    """What the table title (or, short, the figure legend) says when an encoder's E1 run fits each
    image's light in the loss or holds code entries at the start (read from the same `Schedule` the run
    trains with)."""
    e1 = section(cfg, encoder)
    schedule, its = Schedule.from_config(e1), e1["iterations"]
    note = ""
    if schedule.fit_light:
        note += (", own light fitted" if short else
                 "; the photometric term used each image's own best light (solved, not the encoder's), "
                 "which the encoder's light output learned to predict")
    if held := schedule.held_steps(its):
        note += (f", {'/'.join(schedule.hold)} held {held} its" if short else
                 f"; {', '.join(schedule.hold)} got no gradient (kept the mean face's) for the first {held} iterations")
    return note


def run(cfg: dict) -> dict:
    out, settings = outputs(cfg), Settings.from_config(cfg)
    model = build_face_model(settings.face_model)
    train_set = SyntheticSet(paths.synthetic_dir(cfg) / "train")
    test_set = SyntheticSet(paths.synthetic_dir(cfg) / "test")
    n_test = min(settings.training.eval_images, len(test_set))
    tables, curves, notes, metrics, spread = [], {}, [], {}, []
    for name in cfg["e1"]["encoders"]:
        e1, own = section(cfg, name), settings.for_encoder(name)
        evaluate = lambda decoder, device, size=own.training.input_size: synthetic_evaluator(  # noqa: E731
            decoder, test_set, settings.training.eval_images, size, device)
        prepare_run_dir(run_dir(cfg, name), {"config": config_hash({s: own.raw[s] for s in STAGE.params if s != "e1"} | {"e1": e1}),
                                             "data": [train_set.manifest, test_set.manifest],
                                             "code": _stage.code_hash(STAGE.sources)})
        with _stage.timed(f"{name}: {e1['iterations']} iterations"):
            frame, encoder = run_training(own, run_dir(cfg, name), model, name, train_set, evaluate,
                                          e1["iterations"], e1["evaluations"], landmarks=False,
                                          schedule=Schedule.from_config(e1))
        if not is_main():  # under torchrun rank 0 alone writes the results
            continue
        tables.append(summary_table(frame, name).assign(init=encoder.init_description))
        label = display_name(name)
        decoder = training_decoder(own, model).to(select_device(own.device))
        with _stage.timed(f"{name}: per-image errors on {n_test} test images"):
            errors = synthetic_per_image(decoder, encoder, test_set, own.training.input_size, n_test)
        spread.append(pd.DataFrame({"encoder": label, "image": range(n_test),
                                    **{m: errors[m] for m, _ in METRICS}}))
        curves[label + schedule_note(cfg, name, short=True)] = frame
        notes.append(f"{label}: {encoder.init_description}{schedule_note(cfg, name)}")
        metrics |= {f"{name}_{r.metric}_{k}": getattr(r, k) for r in tables[-1].itertuples() for k in ("ours_start", "ours_end")}
        metrics[f"{name}_encoder_init"] = encoder.init_description
    if not is_main():
        return {}
    table = pd.concat(tables, ignore_index=True)
    write_csv(pd.concat([f.assign(encoder=label.split(",")[0]) for label, f in curves.items()], ignore_index=True),
              out["curves_table"])
    write_table(table, out["table"], out["table_md"], cfg,
                title=f"E1 (Fig. 10): trained without landmarks, synthetic test set ({n_test} images). "
                      + ". ".join(notes), stage=NAME)
    first = tables[0]
    plot_curves(curves, [(m, u) for m, u in METRICS], out["figure"],
                title=f"E1: trained without landmarks on synthetic data ({cfg['preset']} preset)",
                paper={m: (t.paper_start, t.paper_end) for m, t in zip([m for m, _ in METRICS], first.itertuples())},
                metadata=figure_metadata(cfg, NAME))
    _stage.wrote(out["figure"])
    per_image = pd.concat(spread, ignore_index=True)
    write_csv(per_image, out["per_image"])
    plot_spread(per_image, "encoder", [(m, f"{m.replace('_', ' ')} ({u})") for m, u in METRICS], out["spread_figure"],
                title=f"E1: per-image errors at the end, synthetic test set ({n_test} images, {cfg['preset']} preset)",
                metadata=figure_metadata(cfg, NAME))
    _stage.wrote(out["spread_figure"])
    _stage.write_json(out["metrics"], metrics)
    return metrics


if __name__ == "__main__":
    raise SystemExit(_stage.main(NAME, run, __doc__.splitlines()[0], distributed=True))
