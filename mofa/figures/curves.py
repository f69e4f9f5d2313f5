"""Error-against-iterations figures (E1, E2), with the paper's start and end values marked."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from mofa.io import atomic_path  # noqa: E402


def save_figure(fig, out_path: str | Path, dpi: int = 120, metadata: Mapping[str, str] | None = None) -> Path:
    """Save a matplotlib figure as PNG atomically and close it; `metadata` goes into PNG text chunks."""
    out_path = Path(out_path)
    try:
        with atomic_path(out_path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", metadata=dict(metadata or {}))
    finally:
        plt.close(fig)
    return out_path


def plot_curves(curves: pd.DataFrame | dict[str, pd.DataFrame], metrics: list[tuple[str, str]], out_path,
                title: str, paper: dict[str, tuple] | None = None, metadata: Mapping[str, str] | None = None) -> Path:
    """One panel per metric: mean (solid) and median (dashed) against iterations, for one run or a
    dict of named runs; the paper's start/end values (after its 200k iterations) as grey markers.
    paper: {metric: (start, end)}; an end may also be {run name: value}, drawn in that run's colour."""
    runs = curves if isinstance(curves, dict) else {"ours": curves}
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, (metric, unit) in zip(axes[0], metrics):
        for (name, frame), colour in zip(runs.items(), palette):
            if f"{metric}_mean" not in frame:
                continue
            ax.plot(frame.iteration, frame[f"{metric}_mean"], "-o", ms=3, color=colour, label=f"{name} mean")
            ax.plot(frame.iteration, frame[f"{metric}_median"], "--", color=colour, alpha=0.7, label=f"{name} median")
        start, end = (paper or {}).get(metric, (None, None))
        last = max(float(f.iteration.max()) for f in runs.values())
        if start is not None:
            ax.plot([0], [start], "s", color="grey", label="paper start")
        if isinstance(end, dict):
            for name, colour in zip(runs, palette):
                if end.get(name) is not None:
                    ax.plot([last], [end[name]], "D", color=colour, mec="black", label=f"{name} paper end (200k it.)")
        elif end is not None:
            ax.plot([last], [end], "D", color="grey", label="paper end (200k it.)")
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"{metric.replace('_', ' ')} ({unit})")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_path, metadata=metadata)
