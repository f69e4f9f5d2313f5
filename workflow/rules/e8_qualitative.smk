rule e8_qualitative:
    """E8 (Figs. 2, 4-6): qualitative grids of each E3 variant on the ibug68 photos."""
    input:
        stage_inputs("e8_qualitative"),
    output:
        **stage_outputs("e8_qualitative"),
    params:
        command=stage_command("e8_qualitative"),
        settings=stage_params("e8_qualitative"),
    threads: stage_threads("e8_qualitative")
    resources:
        **stage_resources("e8_qualitative"),
    log:
        stage_log("e8_qualitative"),
    benchmark:
        stage_benchmark("e8_qualitative")
    shell:
        "{params.command} --log {log}"
