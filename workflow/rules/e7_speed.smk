rule e7_speed:
    """E7 (Sec. 7): training and inference speed of each encoder."""
    input:
        stage_inputs("e7_speed"),
    output:
        **stage_outputs("e7_speed"),
    params:
        command=stage_command("e7_speed"),
        settings=stage_params("e7_speed"),
    threads: stage_threads("e7_speed")
    resources:
        **stage_resources("e7_speed"),
    log:
        stage_log("e7_speed"),
    benchmark:
        stage_benchmark("e7_speed")
    shell:
        "{params.command} --log {log}"
