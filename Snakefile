# MoFA-Bench workflow. `snakemake --cores all` regenerates every result of the `default` preset;
# `--configfile config/ci.yaml` (or paper.yaml, or your own file) picks another. Keys and defaults:
# config/schema.yaml. Each rule calls one stage entry point in pipelines/; dvc.yaml runs the same ones.
import sys

from snakemake.utils import min_version

min_version("8.0")
sys.path.insert(0, workflow.basedir)  # pipelines/ and mofa/ also without `pip install -e .`

from mofa.errors import MofaError
from pipelines._workflow import checked_config

# A preset given with --configfile replaces the default one instead of being merged on top of it,
# so that Snakemake and `python -m pipelines.<stage> --config <file>` read the same values.
if not workflow.overwrite_configfiles:

    configfile: "config/default.yaml"


# The project's own check (mofa/config.py against config/schema.yaml), with `mofa`'s one-line messages;
# the config the rules read is the validated one, defaults filled.
try:
    checked = checked_config(workflow.configfiles, workflow.config_settings.config)
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
        stage_targets("face_model"),
        stage_targets("synthetic"),
        stage_targets("real_data"),
        stage_targets("e1_synthetic"),
        stage_targets("e7_speed"),
        stage_targets("e2_e3_real"),
        stage_targets("e8_qualitative"),
        stage_targets("e4_baselines"),
        stage_targets("e5_conv_autoencoder"),
        stage_targets("e6_learned_decoder"),
        stage_targets("report"),


include: "workflow/rules/face_model.smk"
include: "workflow/rules/synthetic.smk"
include: "workflow/rules/e1_synthetic.smk"
include: "workflow/rules/e7_speed.smk"
include: "workflow/rules/real_data.smk"
include: "workflow/rules/e2_e3_real.smk"
include: "workflow/rules/e8_qualitative.smk"
include: "workflow/rules/e4_baselines.smk"
include: "workflow/rules/e5_conv_autoencoder.smk"
include: "workflow/rules/e6_learned_decoder.smk"
include: "workflow/rules/report.smk"
