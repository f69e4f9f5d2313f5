rule e4_baselines:
    """E4 (Figs. 7, 14): Gauss-Newton with and without landmarks against the trained encoders."""
    input:
        stage_inputs("e4_baselines"),
    output:
        **stage_outputs("e4_baselines"),
    params:
        command=stage_command("e4_baselines"),
        settings=stage_params("e4_baselines"),
    threads: stage_threads("e4_baselines")
    resources:
        **stage_resources("e4_baselines"),
    log:
        stage_log("e4_baselines"),
    benchmark:
        stage_benchmark("e4_baselines")
    shell:
        "{params.command} --log {log}"
