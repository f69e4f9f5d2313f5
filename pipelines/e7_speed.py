"""Stage `e7_speed` (paper Sec. 7): training throughput and inference time per image for each
encoder, at batch 1 and 32, with the share of a training step spent in decoder + loss; beside the
paper's 4 ms (AlexNet) / 14 ms (VGG-Face) inference on a TitanX Pascal GPU.

Writes results/<preset>/tables/e7_speed.csv + .md and metrics/e7_speed.json.

    python -m pipelines.e7_speed --config config/ci.yaml
"""
from __future__ import annotations

import logging

import pandas as pd

from mofa import bench
from mofa.config import select_device
from mofa.facemodel import build_face_model
from mofa.machine_load import LoadMonitor
from mofa.paper import ENCODER_NAMES, paper_value
from mofa.settings import Settings
from pipelines import _stage
from pipelines.stages import STAGES
from pipelines.tables import write_table

STAGE = STAGES["e7_speed"]  # its params, sources and outputs (pipelines/stages.py)
NAME = STAGE.name
outputs = STAGE.outputs
log = logging.getLogger(f"mofa.stage.{NAME}")


def run(cfg: dict) -> dict:
    e7, out = cfg["e7"], outputs(cfg)
    settings = Settings.from_config(cfg)
    model, camera, device = build_face_model(settings.face_model), settings.camera, select_device(settings.device)
    input_size = settings.training.input_size
    common = dict(encoders=e7["encoders"], batch_sizes=e7["batch_sizes"], input_size=input_size, device=device,
                  repeats=e7["repeats"], options=settings.encoders,
                  precisions=bench.timed_precisions(e7["precisions"], device))
    with LoadMonitor() as load:
        peak = bench.bench_peak(device, repeats=e7["repeats"])
        infer = pd.DataFrame(bench.bench_infer(model, camera, **common))
        train = pd.DataFrame(bench.bench_train(model, camera, peak=bench.peak_gflops(peak), **common))
    table = infer.merge(train, on=["encoder", "precision", "batch", "input_px", "device"])
    table["paper_inference_ms"] = [paper_value("E7", "inference_time", ENCODER_NAMES.get(e, e))  # None: not in the paper
                                   for e in table.encoder]
    table["paper_device"] = "TitanX Pascal GPU"
    table["device"] = bench.device_name(device)
    for key, value in load.summary().items():
        table[key] = value
    note = load.note()
    write_table(table, out["table"], out["table_md"], cfg,
                title=f"E7 (Sec. 7): speed on {bench.device_name(device)}; encoder input px per row "
                      f"(training.input_size {input_size}, or the encoder's own); peak "
                      + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in bench.peak_gflops(peak).items())
                      + (f"; {note}" if note else ""), stage=NAME)
    metrics = {f"{r.encoder}_{r.precision}_b{r.batch}_{k}": getattr(r, k) for r in table.itertuples()
               for k in ("ms_per_image", "images_per_s", "decoder_loss_share", "peak_fraction")}
    metrics["machine_idle"] = load.idle
    _stage.write_json(out["metrics"], metrics)
    return metrics


if __name__ == "__main__":
    raise SystemExit(_stage.main(NAME, run, __doc__.splitlines()[0]))
