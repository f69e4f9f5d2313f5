"""Diagnostics: measurements behind docs/cpu-findings.md that are neither baselines nor pipeline stages
(they sit above both and may read a stage's outputs)."""
