# Helpers shared by the rule files: each stage module in pipelines/ declares what it reads and writes
# (PARAMS, SOURCES, outputs(cfg)); these turn that into rule inputs, outputs, params, logs and commands.
import importlib
import json
import os
import shlex
import sys
from pathlib import Path

from pipelines import _stage

PYTHON = shlex.quote(sys.executable)  # the interpreter running Snakemake, which has the project installed
CONFIG_FILES = [os.path.relpath(p) for p in workflow.configfiles]  # --configfile's, else the default
# What the stages are told: the same config files, plus any `snakemake --config KEY=VALUE` overrides.
CONFIG_ARGS = " ".join(
    [f"--config {shlex.quote(f)}" for f in CONFIG_FILES]
    + [f"--set {shlex.quote(f'{k}={json.dumps(v)}')}" for k, v in workflow.config_settings.config.items()]
)


def stage_module(name):
    return importlib.import_module(f"pipelines.{name}")


def stage_outputs(name):
    """Named output files of a stage for this config."""
    return {key: str(path) for key, path in stage_module(name).outputs(config).items()}


def stage_targets(name):
    return list(stage_outputs(name).values())


def stage_sources(name):
    """The code and schema a stage runs, as files, so that editing them reruns it (as DVC's deps do):
    relative to the working directory, absolute where that is not the repository (`--directory`)."""
    here = Path.cwd().resolve()
    return [str(p.relative_to(here)) if p.is_relative_to(here) else str(p)
            for p in _stage.source_files(stage_module(name).SOURCES)]


def stage_inputs(name):
    """The code a stage runs plus the outputs of the stages it needs (its module's NEEDS)."""
    needed = [path for other in getattr(stage_module(name), "NEEDS", ()) for path in stage_targets(other)]
    return stage_sources(name) + needed


def stage_params(name):
    """The config sections a stage reads: a change to any of them reruns it."""
    return {section: config[section] for section in stage_module(name).PARAMS}


def stage_log(name):
    return str(_stage.log_path(config, name))


def stage_benchmark(name):
    return str(_stage.benchmark_path(config, name))


def stage_command(name):
    return f"{PYTHON} -m pipelines.{name} {CONFIG_ARGS}"
