"""The MoFA paper's reported numbers (mofa/data/paper_numbers.csv, carried from the paper), to set
beside ours in tables and figures."""
from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd

PAPER_NUMBERS = Path(__file__).parent / "data" / "paper_numbers.csv"
ENCODER_NAMES = {"alexnet": "AlexNet", "vgg_face": "VGG-Face"}  # the paper's names of the encoders it reports on


@functools.lru_cache(maxsize=1)
def paper_numbers() -> pd.DataFrame:
    """One row per reported number: experiment, figure, dataset, method, encoder, landmark_loss,
    metric, unit, value, note."""
    return pd.read_csv(PAPER_NUMBERS, dtype={"landmark_loss": str})


def paper_value(experiment: str, metric: str, encoder: str | None = None,
                landmark_loss: str | None = None) -> float | None:
    """The paper's value for one metric, or None where the paper reports none."""
    rows = paper_numbers()
    rows = rows[(rows.experiment == experiment) & (rows.metric == metric)]
    if encoder is not None:
        rows = rows[rows.encoder == encoder]
    if landmark_loss is not None:
        rows = rows[rows.landmark_loss == landmark_loss]
    return float(rows.value.iloc[0]) if len(rows) else None
