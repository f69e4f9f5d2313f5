"""Stage entry points, one module per pipeline step, called by both Snakemake and DVC.

stages.py declares every step once (the config sections it reads, the stages it needs, its code and
the files it writes; paths.py names the results folders they share), without importing torch or any
stage module. Each pipelines/<stage>.py runs its step (run(cfg), or `python -m pipelines.<stage>
--config <preset or file>`). The Snakefile makes one rule per declaration, and dvc.yaml is written from
them (`python -m pipelines.dvc_yaml`).
"""
