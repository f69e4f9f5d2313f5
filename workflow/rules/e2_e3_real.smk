rule e2_e3_real:
    """E2 (Fig. 9) and E3 (Figs. 8, 11): the encoders on real photos without and with the landmark loss."""
    input:
        stage_inputs("e2_e3_real"),
    output:
        **stage_outputs("e2_e3_real"),
    params:
        command=stage_command("e2_e3_real"),
        settings=stage_params("e2_e3_real"),
    threads: stage_threads("e2_e3_real")
    resources:
        **stage_resources("e2_e3_real"),
    log:
        stage_log("e2_e3_real"),
    benchmark:
        stage_benchmark("e2_e3_real")
    shell:
        "{params.command} --log {log}"
