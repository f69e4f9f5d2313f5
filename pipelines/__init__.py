"""Stage entry points, one module per pipeline step, called by both Snakemake and DVC.

Each module declares what its step reads and writes (PARAMS, SOURCES, outputs(cfg)) and runs it
(run(cfg), or `python -m pipelines.<stage> --config <preset or file>`). The workflow files only wire
these together: workflow/rules/<stage>.smk for Snakemake, the stage of the same name in dvc.yaml.
"""
