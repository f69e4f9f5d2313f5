"""Where results go under results/<preset>/: the folders and files that more than one stage, or the
workflow, names (data folders, training runs, logs, benchmarks, the standard result files), so that
no stage imports another stage for a path. Imports neither torch nor the stage modules."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mofa.config import results_dir

# The files of a synthetic split folder (format: mofa/data/synthetic.py), each a declared output, so that
# the workflow engines regenerate a split when any of them is gone or stale; tests/test_synthetic.py
# checks that a written split holds exactly these.
SPLIT_FILES = ("images.npy", "codes.npy", "landmarks.npy", "landmark_visible.npy", "vertices.npy", "samples.csv",
               "manifest.json")
SPLITS = ("train", "test")
# The files of a prepared real-photo folder (format: mofa/realdata/prepare.py), each a declared output,
# so that the workflow engines prepare a dataset again when any of them is gone or stale;
# tests/test_real_stages.py checks that a prepared folder holds exactly these.
FOLDER_FILES = ("images.npy", "landmarks.npy", "landmark_confidence.npy", "gt_landmarks.npy", "transforms.npy",
                "manifest.csv", "summary.json")
DATASETS = ("aflw2000", "ibug68")


def log_path(cfg: Mapping, stage: str) -> Path:
    """results/<preset>/logs/<stage>.log"""
    return results_dir(cfg) / "logs" / f"{stage}.log"


def benchmark_path(cfg: Mapping, stage: str) -> Path:
    """results/<preset>/benchmarks/<stage>.tsv (Snakemake's benchmark: wall time and memory)"""
    return results_dir(cfg) / "benchmarks" / f"{stage}.tsv"


def table_file(cfg: Mapping, name: str) -> Path:
    return results_dir(cfg) / "tables" / name


def figure_file(cfg: Mapping, name: str) -> Path:
    return results_dir(cfg) / "figures" / name


def metrics_file(cfg: Mapping, stage: str) -> Path:
    return results_dir(cfg) / "metrics" / f"{stage}.json"


def result_files(cfg: Mapping, stage: str, figure: bool = True) -> dict[str, Path]:
    """A stage's standard outputs named after it: tables/<stage>.csv and .md, figures/<stage>.png (with
    figure) and metrics/<stage>.json under results/<preset>/."""
    files = {"table": table_file(cfg, f"{stage}.csv"), "table_md": table_file(cfg, f"{stage}.md")}
    if figure:
        files["figure"] = figure_file(cfg, f"{stage}.png")
    return {**files, "metrics": metrics_file(cfg, stage)}


def synthetic_dir(cfg: Mapping) -> Path:
    """The synthetic data, one folder per split (SPLITS)."""
    return results_dir(cfg) / "data" / "synthetic"


def real_dir(cfg: Mapping) -> Path:
    return results_dir(cfg) / "data" / "real"


def real_folder(cfg: Mapping, dataset: str) -> Path:
    """The prepared folder of one dataset (a RealFaceSet)."""
    return real_dir(cfg) / dataset


def run_dir(cfg: Mapping, name: str) -> Path:
    """results/<preset>/runs/<name>: a training run's folder."""
    return results_dir(cfg) / "runs" / name


def e1_run_dir(cfg: Mapping, encoder: str) -> Path:
    """E1's run of one encoder (checkpoint, encoder.pt, metrics.csv)."""
    return run_dir(cfg, f"e1_{encoder}")


def e3_variants(cfg: Mapping) -> list[tuple[str, bool]]:
    """(encoder, landmark loss on) for each E3 run, without landmarks first."""
    return [(encoder, landmarks) for encoder in cfg["e3"]["encoders"] for landmarks in (False, True)]


def e3_variant_name(encoder: str, landmarks: bool) -> str:
    return f"{encoder}_{'land' if landmarks else 'noland'}"


def e3_run_dir(cfg: Mapping, encoder: str, landmarks: bool) -> Path:
    """E3's run of one variant (checkpoint, encoder.pt, metrics.csv, aflw2000_nme.csv)."""
    return run_dir(cfg, f"e3_{e3_variant_name(encoder, landmarks)}")
