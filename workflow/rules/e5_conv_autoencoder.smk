rule e5_conv_autoencoder:
    """E5 (Fig. 12): conv autoencoder against the model-based autoencoder (E1's encoder + analytic decoder)."""
    input:
        stage_inputs("e5_conv_autoencoder"),
    output:
        **stage_outputs("e5_conv_autoencoder"),
    params:
        command=stage_command("e5_conv_autoencoder"),
        settings=stage_params("e5_conv_autoencoder"),
    threads: stage_threads("e5_conv_autoencoder")
    resources:
        **stage_resources("e5_conv_autoencoder"),
    log:
        stage_log("e5_conv_autoencoder"),
    benchmark:
        stage_benchmark("e5_conv_autoencoder")
    shell:
        "{params.command} --log {log}"
