rule e1_synthetic:
    """E1 (Fig. 10): AlexNet without landmarks on synthetic data; errors against iterations."""
    input:
        stage_inputs("e1_synthetic"),
    output:
        **stage_outputs("e1_synthetic"),
    params:
        command=stage_command("e1_synthetic"),
        settings=stage_params("e1_synthetic"),
    threads: stage_threads("e1_synthetic")
    resources:
        **stage_resources("e1_synthetic"),
    log:
        stage_log("e1_synthetic"),
    benchmark:
        stage_benchmark("e1_synthetic")
    shell:
        "{params.command} --log {log}"
