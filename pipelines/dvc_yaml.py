"""dvc.yaml, written from the stage declarations (pipelines/stages.py): one DVC stage per stage, running
the same entry point as its Snakemake rule.

    python -m pipelines.dvc_yaml [--check]

writes dvc.yaml at the repository root (`make dvc.yaml`); with --check it writes nothing and exits with
status 1 when the file differs from what it would write.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

from mofa import io
from mofa.config import REPO_ROOT, load_config
from pipelines import paths
from pipelines.stages import STAGES, Stage

PATH = REPO_ROOT / "dvc.yaml"
COMMAND = "python -m pipelines.dvc_yaml"
PRESET = "${preset}"  # DVC fills it in from params.yaml
PARAMS_FILE = f"config/{PRESET}.yaml"
HEADER = f"""\
# Generated from pipelines/stages.py by `{COMMAND}` (`make dvc.yaml`): edit that, not this.
# The MoFA-Bench pipeline for DVC: the same stage entry points (pipelines/) as the Snakemake rules. The
# preset comes from params.yaml; each stage's `params:` are the config sections it reads, `deps:` its
# sources and the outputs of the stages it needs, `outs:`, `metrics:` and `plots:` its outputs apart
# from those of each encoder (which encoders there are depends on the preset).
# Run with the project's environment active (`source .venv/bin/activate`) and MOFA_ICT_DIR set.
"""
# Outputs that DVC does not cache: the small text files, and these, with the note written beside the
# first of a stage's.
TEXT_SUFFIXES = (".csv", ".md", ".json", ".html")
NOT_CACHED = {".npz": "a hard link into face_model.cache_dir, which keeps every built model",
              ".npy": "large and derived: regenerate, do not cache"}


def template_config() -> dict:
    """A config whose results paths are dvc.yaml's: results/${preset}/..."""
    return load_config("default") | {"results_dir": "results", "preset": PRESET}


def _entry(path: Path, notes: set[str], plot: tuple[str, str] | None = None) -> list[str]:
    """One entry of outs, metrics or plots: `cache: false` (with its note) where DVC keeps no copy, and a
    curve's x and y columns."""
    options = []
    if path.suffix in TEXT_SUFFIXES or path.suffix in NOT_CACHED:
        note = NOT_CACHED.get(path.suffix)
        options.append("cache: false" + (f"  # {note}" if note and note not in notes else ""))
        notes.add(note)
    if plot is not None:
        options += [f"x: {plot[0]}", f"y: {plot[1]}"]
    return [f"      - {path}" + (":" if options else ""), *[f"          {option}" for option in options]]


def stage_lines(stage: Stage, cfg: Mapping) -> list[str]:
    needed = [path for other in stage.needs for path in STAGES[other].dvc_outputs(cfg).values()]
    lines = [f"  {stage.name}:", "    cmd: >-", f"      python -m pipelines.{stage.name} --config {PARAMS_FILE}",
             f"      --log {paths.log_path(cfg, stage.name)}", "    deps:"]
    lines += [f"      - {dep}" for dep in [*stage.sources, *needed]]
    lines += ["    params:", f"      - {PARAMS_FILE}:", *[f"          - {section}" for section in stage.params]]
    outputs, notes = stage.dvc_outputs(cfg), set()
    kinds = {"outs": [k for k in outputs if k != "metrics" and k not in stage.plots],
             "metrics": [k for k in outputs if k == "metrics"], "plots": [k for k in outputs if k in stage.plots]}
    for kind, keys in kinds.items():
        if keys:
            lines.append(f"    {kind}:")
            for key in keys:
                lines += _entry(outputs[key], notes, stage.plots.get(key))
    return lines


def render() -> str:
    cfg = template_config()
    lines = ["stages:"] + [line for stage in STAGES.values() for line in stage_lines(stage, cfg)]
    return HEADER + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit with status 1 when dvc.yaml is not current")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = PATH.is_file() and PATH.read_text() == text
        if not current:
            print(f"{PATH.name} is not what pipelines/stages.py declares: run `{COMMAND}`", file=sys.stderr)
        return 0 if current else 1
    io.write_text(PATH, text)
    print(f"wrote {PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
