"""Per-image error distributions (DESIGN: mean, median and spread per method): one panel per metric, a
box per method with every image as a point (seaborn)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from mofa.figures.curves import save_figure  # noqa: E402


def plot_spread(frame: pd.DataFrame, group: str, panels: list[tuple[str, str]], out_path: str | Path, title: str,
                metadata: Mapping[str, str] | None = None, facet: str | None = None) -> Path:
    """frame: one row per image and method (`group` names the method); panels: (metric column, axis
    label), one panel each (one row of panels per value of `facet` when given), for the metrics with a
    finite value there. Boxes show the quartiles and the median, the white diamond the mean; NaN values
    are left out."""
    facets = list(dict.fromkeys(frame[facet])) if facet else [None]
    cells = [(f, metric, label) for f in facets for metric, label in panels
             if metric in frame and np.isfinite(pd.to_numeric((frame if f is None else frame[frame[facet] == f])[metric],
                                                              errors="coerce")).any()]
    if not cells:
        raise ValueError(f"{out_path}: no finite value in any of {[m for m, _ in panels]}")
    columns = max(sum(1 for c in cells if c[0] == f) for f in facets)
    rows = [f for f in facets if any(c[0] == f for c in cells)]
    order = list(dict.fromkeys(frame[group]))
    height = 0.42 * len(order) + 1.2
    fig, axes = plt.subplots(len(rows), columns, figsize=(4.2 * columns, height * len(rows)), squeeze=False)
    state = np.random.get_state()
    np.random.seed(0)  # seaborn's strip jitter draws from NumPy's global generator: the same figure every run
    try:
        _draw(axes, rows, cells, frame, facet, group, order)
    finally:
        np.random.set_state(state)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_path, metadata=metadata)


def _draw(axes, rows, cells, frame, facet, group, order) -> None:
    for r, f in enumerate(rows):
        mine = [c for c in cells if c[0] == f]
        data = frame if f is None else frame[frame[facet] == f]
        for c, ax in enumerate(axes[r]):
            if c >= len(mine):
                ax.set_visible(False)
                continue
            _, metric, label = mine[c]
            values = data.assign(**{metric: pd.to_numeric(data[metric], errors="coerce")}).dropna(subset=[metric])
            kept = [g for g in order if g in set(values[group])]
            sns.boxplot(data=values, x=metric, y=group, order=kept, ax=ax, color="#cfd8e3", fliersize=0, width=0.6,
                        showmeans=True, meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black",
                                                   "markersize": 4})
            sns.stripplot(data=values, x=metric, y=group, order=kept, ax=ax, size=2.5, alpha=0.55, color="C0",
                          jitter=0.2)
            ax.set_xlabel(label if f is None else f"{label} ({f})")
            ax.set_ylabel("")
            ax.grid(axis="x", alpha=0.3)
            ax.tick_params(axis="y", labelsize=7)
