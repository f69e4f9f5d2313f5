rule real_data:
    """Prepare the real photographs (AFLW2000-3D, ibug68): detection, crop, landmarks, split."""
    input:
        stage_inputs("real_data"),
    output:
        **stage_outputs("real_data"),
    params:
        command=stage_command("real_data"),
        settings=stage_params("real_data"),
    threads: stage_threads("real_data")
    resources:
        **stage_resources("real_data"),
    log:
        stage_log("real_data"),
    benchmark:
        stage_benchmark("real_data")
    shell:
        "{params.command} --log {log}"
