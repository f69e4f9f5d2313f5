rule synthetic:
    """Render the synthetic ground-truth training and test sets."""
    input:
        stage_inputs("synthetic"),
    output:
        **stage_outputs("synthetic"),
    params:
        command=stage_command("synthetic"),
        settings=stage_params("synthetic"),
    threads: stage_threads("synthetic")
    resources:
        **stage_resources("synthetic"),
    log:
        stage_log("synthetic"),
    benchmark:
        stage_benchmark("synthetic")
    shell:
        "{params.command} --log {log}"
