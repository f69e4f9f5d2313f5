rule face_model:
    """Build (or read from the cache) the face model and draw its model card."""
    input:
        stage_inputs("face_model"),
    output:
        **stage_outputs("face_model"),
    params:
        command=stage_command("face_model"),
        settings=stage_params("face_model"),
    threads: stage_threads("face_model")
    resources:
        **stage_resources("face_model"),
    log:
        stage_log("face_model"),
    benchmark:
        stage_benchmark("face_model")
    shell:
        "{params.command} --log {log}"
