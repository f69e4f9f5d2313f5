"""Figures: matplotlib (Agg) plots written atomically as PNG."""
