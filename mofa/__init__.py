"""MoFA-Bench: model-based face autoencoders (MoFA) re-implemented, with baselines, data and metrics."""

__version__ = "0.1.0"
