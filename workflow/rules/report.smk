rule report:
    """The report: every table and figure beside the paper's numbers, run metadata, wall time per stage."""
    input:
        stage_inputs("report"),
    output:
        **stage_outputs("report"),
    params:
        command=stage_command("report"),
        settings=stage_params("report"),
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    log:
        stage_log("report"),
    benchmark:
        stage_benchmark("report")
    shell:
        "{params.command} --log {log}"
