# MoFA-Bench workflow. `snakemake --cores all` regenerates every result of the `default` preset;
# `--configfile config/ci.yaml` (or paper.yaml, or your own file) picks another. Keys and defaults:
# config/schema.yaml. One rule per stage declared in pipelines/stages.py, each calling the stage's entry point
# (pipelines/<stage>.py); dvc.yaml, written from the same declarations, runs the same ones.
import sys

from snakemake.utils import min_version

min_version("8.0")
sys.path.insert(0, workflow.basedir)  # pipelines/ and mofa/ also without `pip install -e .`

from mofa.errors import MofaError
from pipelines._workflow import checked_config, snakemake_overrides
from pipelines.stages import STAGES

# A preset given with --configfile replaces the default one instead of being merged on top of it,
# so that Snakemake and `python -m pipelines.<stage> --config <file>` read the same values.
if not workflow.overwrite_configfiles:

    configfile: "config/default.yaml"


# The project's own check (mofa/config.py against config/schema.yaml), with `mofa`'s one-line messages;
# the config the rules read is the validated one, defaults filled.
OVERRIDES = snakemake_overrides(workflow.config_settings.config)  # `--config KEY=VALUE`, typed; the rules pass them on
try:
    checked = checked_config(workflow.configfiles, OVERRIDES)
except MofaError as exc:
    print(f"mofa: error: {exc}", file=sys.stderr)
    sys.exit(2)
config.clear()
config.update(checked)


include: "workflow/rules/common.smk"


# Every stage's outputs, the data folders' files included: Snakemake regenerates a missing file only
# where a target asks for it (a later stage whose own outputs are up to date does not).
rule all:
    input:
        [stage_targets(name) for name in STAGES],


# One rule per stage, named after it (the SLURM profile and `--set-resources` name them).
for name in STAGES:

    rule:
        name:
            name
        input:
            stage_inputs(name),
        output:
            **stage_outputs(name),
        params:
            command=stage_command(name),
            settings=stage_params(name),
        threads: stage_threads(name)
        resources:
            **stage_resources(name),
        log:
            stage_log(name),
        benchmark:
            stage_benchmark(name)
        shell:
            "{params.command} --log {log:q}"

    # `--list-rules` shows the description; a rule's docstring can only be a string literal
    workflow.get_rule(name).docstring = STAGES[name].description
