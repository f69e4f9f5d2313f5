# Helpers of the Snakefile's rules: each stage's declaration in pipelines/stages.py (params, needs,
# sources, outputs(cfg)) turned into rule inputs, outputs, params, logs and commands. They read the
# declarations only, so that building the DAG imports no stage module (nor torch).
import json
import os
import shlex
import sys
from pathlib import Path
from typing import NamedTuple

from pipelines import paths
from pipelines.stages import STAGES, source_files

PYTHON = shlex.quote(sys.executable)  # the interpreter running Snakemake, which has the project installed
CONFIG_FILES = [os.path.relpath(p) for p in workflow.configfiles]  # --configfile's, else the default
# What the stages are told: the same config files, plus any `snakemake --config KEY=VALUE` overrides.
CONFIG_ARGS = " ".join(
    [f"--config {shlex.quote(f)}" for f in CONFIG_FILES]
    + [f"--set {shlex.quote(f'{k}={json.dumps(v)}')}" for k, v in OVERRIDES.items()]  # OVERRIDES: the Snakefile's
)


def stage_outputs(name):
    """Named output files of a stage for this config."""
    return {key: str(path) for key, path in STAGES[name].outputs(config).items()}


def stage_targets(name):
    return list(stage_outputs(name).values())


def stage_sources(name):
    """The code and schema a stage runs, as files, so that editing them reruns it (as DVC's deps do):
    relative to the working directory, absolute where that is not the repository (`--directory`)."""
    here = Path.cwd().resolve()
    return [str(p.relative_to(here)) if p.is_relative_to(here) else str(p)
            for p in source_files(STAGES[name].sources)]


def stage_inputs(name):
    """The code a stage runs plus the outputs of the stages it needs."""
    needed = [path for other in STAGES[name].needs for path in stage_targets(other)]
    return stage_sources(name) + needed


def stage_params(name):
    """The config sections a stage reads: a change to any of them reruns it."""
    return {section: config[section] for section in STAGES[name].params}


def stage_log(name):
    return str(paths.log_path(config, name))


def stage_benchmark(name):
    return str(paths.benchmark_path(config, name))


def stage_command(name):
    return f"{PYTHON} -m pipelines.{name} {CONFIG_ARGS}"


# What each stage asks a cluster for (`snakemake --profile profiles/slurm`): cores, memory in MB, wall
# time in minutes, and whether it runs torch on the config's device (then one GPU when `device: cuda`).
# Sized for the paper preset, with room to spare: the synthetic data is memory-mapped, not held in RAM;
# one paper-scale training run is ~13 h on one GPU, and e2_e3_real trains E2 and every E3 variant of each
# encoder in one job. A cluster whose limits differ overrides a value per rule, e.g.
# `--set-resources e2_e3_real:runtime=2880` (see profiles/slurm/config.yaml).
class StageResources(NamedTuple):
    threads: int
    mem_mb: int
    runtime: int
    device: bool


STAGE_RESOURCES = {
    "face_model": StageResources(1, 8_000, 60, False),
    "synthetic": StageResources(16, 16_000, 6 * 60, False),
    "e1_synthetic": StageResources(8, 16_000, 2 * 24 * 60, True),
    "e7_speed": StageResources(8, 16_000, 2 * 60, True),
    "real_data": StageResources(1, 8_000, 4 * 60, False),
    "e2_e3_real": StageResources(8, 16_000, 7 * 24 * 60, True),
    "e8_qualitative": StageResources(8, 16_000, 2 * 60, True),
    "e4_baselines": StageResources(8, 16_000, 12 * 60, True),
    "e5_conv_autoencoder": StageResources(8, 16_000, 2 * 24 * 60, True),
    "e6_learned_decoder": StageResources(8, 16_000, 2 * 24 * 60, True),
    "report": StageResources(1, 4_000, 30, True),  # names the device it would run on (select_device)
}


def stage_threads(name):
    """Run locally, a multi-core stage takes every core Snakemake was given (--cores): torch and Open3D
    use them all, and a rule without threads would get one core and OMP_NUM_THREADS=1. On a cluster it
    asks for the table's cores (capped by --max-threads). A function of the job, as Snakemake knows its
    executor only once it builds the jobs, after reading the rules."""
    threads = STAGE_RESOURCES[name].threads

    def job_threads(wildcards):
        return workflow.cores if workflow.local_exec and threads > 1 else threads

    return job_threads


def stage_resources(name):
    """The stage's memory, wall time and, for a torch stage when the config says device: cuda, one GPU."""
    res = STAGE_RESOURCES[name]
    resources = {"mem_mb": res.mem_mb, "runtime": res.runtime}
    if res.device and config["device"] == "cuda":
        resources["gpu"] = 1
    return resources
