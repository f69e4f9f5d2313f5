"""Bar plots of per-variant results beside the paper's (E3, paper Figs. 8, 11)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mofa.figures.curves import save_figure  # noqa: E402


def _label(value: float) -> str:
    """3 significant digits, without an exponent for large values (9,680 rather than 9.68e+03)."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def plot_variant_bars(table: pd.DataFrame, panels: list[tuple[str, str | None, str]], out_path: str | Path,
                      title: str, label: str = "variant", metadata: Mapping[str, str] | None = None,
                      log_panels: tuple[str, ...] = ()) -> Path:
    """One panel per (our column, paper column or None, axis label): a pair of bars per row of
    `table` (named by its `label` column), ours and the paper's; a missing value draws no bar.
    Panels whose column is in `log_panels` get a logarithmic y axis (e.g. times spanning 1000x)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.4), squeeze=False)
    x = np.arange(len(table))
    for ax, (ours, paper, ylabel) in zip(axes[0], panels):
        width = 0.38 if paper else 0.6
        values = pd.to_numeric(table[ours], errors="coerce").to_numpy(float)
        bars = ax.bar(x - (width / 2 if paper else 0), np.nan_to_num(values), width, label="ours", color="C0")
        for bar, v in zip(bars, values):
            if np.isfinite(v):
                ax.annotate(_label(v), (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
        if paper:
            reported = pd.to_numeric(table[paper], errors="coerce").to_numpy(float)
            bars = ax.bar(x + width / 2, np.nan_to_num(reported), width, label="paper", color="grey")
            for bar, v in zip(bars, reported):
                if np.isfinite(v):
                    ax.annotate(_label(v), (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, table[label], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        if ours in log_panels:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_path, metadata=metadata)
