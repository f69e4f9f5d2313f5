"""Every pipeline stage declared once: what it is, the config sections it reads (params), the stages
whose outputs it reads (needs), the code it runs (sources) and the files it writes for a config. The
Snakemake rules (Snakefile, workflow/rules/common.smk) and dvc.yaml (`python -m pipelines.dvc_yaml`) are
made from these; each stage's entry point, pipelines/<stage>.py, runs it. Imports neither torch nor the
stage modules, so that the workflow engines read it at once."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from mofa.config import REPO_ROOT, results_dir
from pipelines import paths

Outputs = Callable[[Mapping], dict[str, Path]]


def _none(cfg: Mapping) -> dict[str, Path]:
    return {}


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step: `python -m pipelines.<name>`.

    params: the config sections it reads (a change to any of them reruns it; dvc.yaml's `params:`).
    needs: the stages whose outputs it reads. sources: the code it runs, files or folders under the
    repository (what it imports; an edit to any of it reruns the stage, and a training run's key holds
    its hash). outputs: every file it writes for a config, by name; per_encoder_outputs: those of them
    that belong to one encoder it trains or shows (which encoders there are depends on the preset).
    manifests: for a stage that writes data, the files that describe it (their hashes stamp every table
    and figure made from it). plots: the outputs that are curves, as (x, y) columns (for `dvc plots`).
    """
    name: str
    description: str
    params: tuple[str, ...]
    sources: tuple[str, ...]
    outputs: Outputs
    needs: tuple[str, ...] = ()
    per_encoder_outputs: Outputs = _none
    manifests: Outputs = _none
    plots: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)

    def dvc_outputs(self, cfg: Mapping) -> dict[str, Path]:
        """The outputs without those of each encoder: dvc.yaml serves every preset, so DVC tracks the
        stage's tables, figures and metrics (Snakemake tracks every file)."""
        per_encoder = self.per_encoder_outputs(cfg)
        return {k: v for k, v in self.outputs(cfg).items() if k not in per_encoder}


def source_files(sources: Iterable[str]) -> list[Path]:
    """A stage's sources as files under the repository: each folder's .py files, sorted."""
    files = []
    for source in sources:
        path = REPO_ROOT / source
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def needed(name: str) -> list[str]:
    """Every stage whose outputs `name` reads, directly or through others, in a stable order: depth
    first, each once."""
    order: list[str] = []

    def visit(stage: str) -> None:
        for other in STAGES[stage].needs:
            if other not in order:
                visit(other)
                order.append(other)

    visit(name)
    return order


# What every stage module imports from the pipelines package besides itself.
PIPELINE = ("pipelines/_stage.py", "pipelines/paths.py", "pipelines/stages.py")
# What E5 and E6 (the trained baseline networks) run besides their own module.
BASELINE_NETWORK_SOURCES = ("config/schema.yaml", "mofa", "baselines/__init__.py", "baselines/conv_autoencoder.py",
                            "baselines/learned_decoder.py", "baselines/compare.py", *PIPELINE, "pipelines/tables.py")


def _face_model(cfg: Mapping) -> dict[str, Path]:
    return {"model": results_dir(cfg) / "models" / "face_model.npz",
            "figure": paths.figure_file(cfg, "face_model.png"), "metrics": paths.metrics_file(cfg, "face_model")}


def _synthetic(cfg: Mapping) -> dict[str, Path]:
    root = paths.synthetic_dir(cfg)
    files = {f"{split}_{Path(name).stem}" if name != "manifest.json" else split: root / split / name
             for split in paths.SPLITS for name in paths.SPLIT_FILES}
    return {**files, "metrics": paths.metrics_file(cfg, "synthetic")}


def _synthetic_manifests(cfg: Mapping) -> dict[str, Path]:
    return {f"synthetic/{split}": paths.synthetic_dir(cfg) / split / "manifest.json" for split in paths.SPLITS}


def _real_data(cfg: Mapping) -> dict[str, Path]:
    files = {f"{dataset}_{Path(name).stem}" if name != "summary.json" else dataset:
             paths.real_folder(cfg, dataset) / name for dataset in paths.DATASETS for name in paths.FOLDER_FILES}
    return {**files, "metrics": paths.metrics_file(cfg, "real_data")}


def _real_manifests(cfg: Mapping) -> dict[str, Path]:
    """Every image kept or dropped, per dataset."""
    return {f"real/{dataset}": paths.real_folder(cfg, dataset) / "manifest.csv" for dataset in paths.DATASETS}


def _e1_per_encoder(cfg: Mapping) -> dict[str, Path]:
    """Each encoder's run: its final weights and curves."""
    return {f"{kind}_{e}": paths.e1_run_dir(cfg, e) / name for e in cfg["e1"]["encoders"]
            for kind, name in (("encoder", "encoder.pt"), ("curves", "metrics.csv"))}


def _e1(cfg: Mapping) -> dict[str, Path]:
    return {**_e1_per_encoder(cfg), **paths.result_files(cfg, "e1_synthetic", figure=False),
            "curves_table": paths.table_file(cfg, "e1_synthetic_curves.csv"),
            "figure": paths.figure_file(cfg, "e1_synthetic_curves.png"),
            "per_image": paths.table_file(cfg, "e1_per_image.csv"),
            "spread_figure": paths.figure_file(cfg, "e1_synthetic_spread.png")}


def _e7(cfg: Mapping) -> dict[str, Path]:
    return paths.result_files(cfg, "e7_speed", figure=False)


def _e3_per_encoder(cfg: Mapping) -> dict[str, Path]:
    """Each variant's run: its final weights and curves."""
    out = {}
    for encoder, landmarks in paths.e3_variants(cfg):
        name, folder = paths.e3_variant_name(encoder, landmarks), paths.e3_run_dir(cfg, encoder, landmarks)
        out[f"encoder_{name}"] = folder / "encoder.pt"
        out[f"curves_{name}"] = folder / "metrics.csv"
    return out


def _e2_e3(cfg: Mapping) -> dict[str, Path]:
    table, figure = paths.table_file, paths.figure_file
    return {**_e3_per_encoder(cfg), "curves_table": table(cfg, "e2_real_curves.csv"),
            "curves_table_md": table(cfg, "e2_real_curves.md"), "curves_figure": figure(cfg, "e2_real_curves.png"),
            "table": table(cfg, "e3_variants.csv"), "table_md": table(cfg, "e3_variants.md"),
            "figure": figure(cfg, "e3_variants.png"), "per_image": table(cfg, "e3_per_image.csv"),
            "spread_figure": figure(cfg, "e3_variants_spread.png"), "metrics": paths.metrics_file(cfg, "e2_e3_real")}


def _e8_per_encoder(cfg: Mapping) -> dict[str, Path]:
    """One figure per E3 variant."""
    names = [paths.e3_variant_name(e, land) for e, land in paths.e3_variants(cfg)]
    return {f"figure_{name}": paths.figure_file(cfg, f"e8_{name}.png") for name in names}


def _e8(cfg: Mapping) -> dict[str, Path]:
    return {**_e8_per_encoder(cfg), "metrics": paths.metrics_file(cfg, "e8_qualitative")}


def _e4(cfg: Mapping) -> dict[str, Path]:
    return {**paths.result_files(cfg, "e4_baselines"), "per_image": paths.table_file(cfg, "e4_per_image.csv"),
            "spread_figure": paths.figure_file(cfg, "e4_baselines_spread.png")}


def _trained_network(stage: str, weights: str) -> Outputs:
    """E5's and E6's outputs: the network's weights and loss curve in runs/<stage>/, the standard files."""
    def outputs(cfg: Mapping) -> dict[str, Path]:
        run = paths.run_dir(cfg, stage)
        return {"weights": run / weights, "losses": run / "losses.csv", **paths.result_files(cfg, stage)}
    return outputs


def _report(cfg: Mapping) -> dict[str, Path]:
    root = results_dir(cfg)
    return {"html": root / "report.html", "markdown": root / "report.md",
            "runtime": paths.table_file(cfg, "runtime.csv"), "runtime_md": paths.table_file(cfg, "runtime.md")}


# The stages upstream first, in the order of Snakemake's `rule all` and of dvc.yaml.
STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("face_model", "Build (or read from the cache) the face model and draw its model card.",
          params=("face_model", "camera"),
          sources=("config/schema.yaml", "mofa/__init__.py", "mofa/errors.py", "mofa/io.py", "mofa/config.py",
                   "mofa/facemodel", "mofa/decoder", "mofa/render", "mofa/figures/__init__.py",
                   "mofa/figures/face_model_card.py", "mofa/bench.py", "mofa/losses.py", "mofa/landmarks.py",
                   "mofa/training/__init__.py", "mofa/training/distributed.py",  # pipelines/_stage.py's torchrun
                   "mofa/training/precision.py",  # the provenance line names the training precision
                   "mofa/settings.py", "pipelines/__init__.py", *PIPELINE, "pipelines/tables.py",
                   "pipelines/face_model.py"),
          outputs=_face_model),
    Stage("synthetic", "Render the synthetic ground-truth training and test sets.",
          params=("face_model", "camera", "light", "synthetic"), needs=("face_model",),
          sources=("config/schema.yaml", "mofa/config.py", "mofa/io.py", "mofa/facemodel", "mofa/decoder",
                   "mofa/render", "mofa/data", "mofa/training/__init__.py", "mofa/training/distributed.py",
                   "mofa/settings.py", "mofa/losses.py", "mofa/landmarks.py", *PIPELINE, "pipelines/synthetic.py"),
          outputs=_synthetic, manifests=_synthetic_manifests),
    Stage("real_data", "Prepare the real photographs (AFLW2000-3D, ibug68): detection, crop, landmarks, split.",
          params=("camera", "real_data"),
          sources=("config/schema.yaml", "mofa/__init__.py", "mofa/config.py", "mofa/errors.py", "mofa/io.py",
                   "mofa/landmarks.py", "mofa/metrics.py", "mofa/realdata", "mofa/training/__init__.py",
                   "mofa/training/distributed.py", "mofa/settings.py", "mofa/decoder", "mofa/losses.py",
                   "pipelines/__init__.py", *PIPELINE, "pipelines/real_data.py"),
          outputs=_real_data, manifests=_real_manifests),
    Stage("e1_synthetic", "E1 (Fig. 10): AlexNet without landmarks on synthetic data; errors against iterations.",
          params=("seed", "face_model", "camera", "light", "synthetic", "loss", "training", "encoders", "e1"),
          needs=("synthetic",),
          sources=("config/schema.yaml", "mofa", *PIPELINE, "pipelines/tables.py", "pipelines/e1_synthetic.py"),
          outputs=_e1, per_encoder_outputs=_e1_per_encoder,
          plots={"curves_table": ("iteration", "geometric_error_mean")}),
    Stage("e7_speed", "E7 (Sec. 7): training and inference speed of each encoder.",
          params=("face_model", "camera", "training", "e7"), needs=("face_model",),
          sources=("config/schema.yaml", "mofa", *PIPELINE, "pipelines/tables.py", "pipelines/e7_speed.py"),
          outputs=_e7),
    Stage("e2_e3_real", "E2 (Fig. 9) and E3 (Figs. 8, 11): the encoders on real photos without and with the "
                        "landmark loss.",
          params=("seed", "face_model", "camera", "light", "synthetic", "loss", "training", "encoders", "e1",
                  "real_data", "e3"),
          needs=("synthetic", "e1_synthetic", "real_data"),  # E1's weights are read only with e3.init_from_e1
          sources=("config/schema.yaml", "mofa", *PIPELINE, "pipelines/tables.py", "pipelines/real_data.py",
                   "pipelines/e2_e3_real.py"),
          outputs=_e2_e3, per_encoder_outputs=_e3_per_encoder),
    Stage("e8_qualitative", "E8 (Figs. 2, 4-6): qualitative grids of each E3 variant on the ibug68 photos.",
          params=("seed", "face_model", "camera", "light", "training", "e3", "e8"),
          needs=("real_data", "e2_e3_real"),
          sources=("config/schema.yaml", "mofa", *PIPELINE, "pipelines/tables.py", "pipelines/real_data.py",
                   "pipelines/e2_e3_real.py", "pipelines/e8_qualitative.py"),
          outputs=_e8, per_encoder_outputs=_e8_per_encoder),
    Stage("e4_baselines", "E4 (Figs. 7, 14): Gauss-Newton with and without landmarks against the trained encoders.",
          params=("seed", "face_model", "camera", "light", "synthetic", "loss", "training", "encoders", "e1",
                  "real_data", "e3", "e4"),
          needs=("synthetic", "real_data", "e1_synthetic", "e2_e3_real"),
          sources=("config/schema.yaml", "mofa", "baselines/__init__.py", "baselines/gauss_newton.py", *PIPELINE,
                   "pipelines/tables.py", "pipelines/real_data.py", "pipelines/e2_e3_real.py",
                   "pipelines/e4_baselines.py"),
          outputs=_e4),
    Stage("e5_conv_autoencoder", "E5 (Fig. 12): conv autoencoder against the model-based autoencoder (E1's "
                                 "encoder + analytic decoder).",
          params=("seed", "face_model", "camera", "light", "synthetic", "training", "e1", "e5"),
          needs=("synthetic", "e1_synthetic"),
          sources=(*BASELINE_NETWORK_SOURCES, "pipelines/e5_conv_autoencoder.py"),
          outputs=_trained_network("e5_conv_autoencoder", "conv_autoencoder.pt"), plots={"losses": ("iteration", "loss")}),
    Stage("e6_learned_decoder", "E6 (Fig. 13): learned decoder against the analytic decoder on held-out synthetic "
                                "codes.",
          params=("seed", "face_model", "camera", "light", "synthetic", "e6"), needs=("synthetic",),
          sources=(*BASELINE_NETWORK_SOURCES, "pipelines/e6_learned_decoder.py"),
          outputs=_trained_network("e6_learned_decoder", "learned_decoder.pt"), plots={"losses": ("iteration", "loss")}),
    # The report collects the tables and figures of the stages it needs by globbing tables/*.csv and
    # figures/*.png (in this order, then by name): adding a stage's name to its needs is all it takes.
    Stage("report", "The report: every table and figure beside the paper's numbers, run metadata, wall time per "
                    "stage.",
          params=("preset",),
          needs=("face_model", "e1_synthetic", "e7_speed", "e2_e3_real", "e8_qualitative", "e4_baselines",
                 "e5_conv_autoencoder", "e6_learned_decoder"),
          sources=("config/schema.yaml", "mofa", "pipelines"),
          outputs=_report),
)}
