"""The MoFA paper's reported numbers (mofa/data/paper_numbers.csv, carried from the paper), to set
beside ours in tables and figures."""
from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd

PAPER_NUMBERS = Path(__file__).parent / "data" / "paper_numbers.csv"
ENCODER_NAMES = {"alexnet": "AlexNet", "vgg_face": "VGG-Face"}  # the paper's names of the encoders it reports on
# Encoders that fill one of the paper's slots without being its network: dlib's face-recognition ResNet
# is the face-recognition-pretrained encoder (the paper's VGG-Face slot) that installs from PyPI. Their
# accuracy rows sit beside that slot's numbers; speed is never compared across networks.
PAPER_SLOT = {"dlib_resnet": "VGG-Face"}
DISPLAY_NAMES = ENCODER_NAMES | {"dlib_resnet": "dlib ResNet"}


def display_name(encoder: str) -> str:
    """An encoder's name in tables and figures (an encoder of your own shows its config name)."""
    return DISPLAY_NAMES.get(encoder, encoder)


def paper_counterpart(encoder: str) -> str | None:
    """The paper's encoder whose accuracy numbers sit beside `encoder`'s: itself, the slot it fills
    (PAPER_SLOT), or None."""
    return ENCODER_NAMES.get(encoder) or PAPER_SLOT.get(encoder)


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
