"""Benchmarks of a trained encoder on real photographs: the AFLW2000-3D landmark benchmark (aflw2000)."""
