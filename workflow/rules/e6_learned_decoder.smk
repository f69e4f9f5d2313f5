rule e6_learned_decoder:
    """E6 (Fig. 13): learned decoder against the analytic decoder on held-out synthetic codes."""
    input:
        stage_inputs("e6_learned_decoder"),
    output:
        **stage_outputs("e6_learned_decoder"),
    params:
        command=stage_command("e6_learned_decoder"),
        settings=stage_params("e6_learned_decoder"),
    threads: stage_threads("e6_learned_decoder")
    resources:
        **stage_resources("e6_learned_decoder"),
    log:
        stage_log("e6_learned_decoder"),
    benchmark:
        stage_benchmark("e6_learned_decoder")
    shell:
        "{params.command} --log {log}"
