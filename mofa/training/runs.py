"""Training runs from the config: the one place that turns config sections into an encoder, a decoder,
loss weights and training settings, so every experiment trains the same way."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import torch

from mofa.config import camera_from_config, select_device
from mofa.decoder import Decoder
from mofa.encoders import build_encoder
from mofa.facemodel.model import FaceModel
from mofa.losses import LossWeights
from mofa.training.trainer import TrainSettings, train


def training_decoder(cfg: Mapping, model: FaceModel) -> Decoder:
    """The decoder over the training face region, with the config's camera and light."""
    return Decoder(model.submesh(model.face_region), camera_from_config(cfg),
                   ambient_offset=cfg["light"]["ambient_offset"])


def make_encoder(cfg: Mapping, name: str, decoder: Decoder, seed: int | None = None) -> torch.nn.Module:
    """The named encoder for this decoder's code layout, from the weights the config names (if any)."""
    tr = cfg["training"]
    bound = tr["rotation_bound_deg"]
    return build_encoder(name, decoder.layout, weights_path=cfg["encoders"][name]["weights_path"],
                         rotation_bound_rad=None if bound is None else math.radians(bound),
                         seed=cfg["seed"] if seed is None else seed)


def settings_for(cfg: Mapping, iterations: int, n_evals: int, progress: bool = True) -> TrainSettings:
    """TrainSettings with `n_evals` evenly spaced evaluations (plus iteration 0)."""
    tr = cfg["training"]
    step = max(1, iterations // max(1, n_evals))
    return TrainSettings(iterations=iterations, batch_size=tr["batch_size"], lr=tr["lr"], lr_z=tr["lr_z"],
                         rho=tr["rho"], eps=tr["eps"], eval_at=tuple(range(step, iterations + 1, step)),
                         checkpoint_every=tr["checkpoint_every"], input_size=tr["input_size"],
                         seed=cfg["seed"], land_decay_to=tr["land_decay_to"], blur_sigma_px=tr["blur_sigma_px"],
                         blur_until=tr["blur_until"], progress=progress)


def loss_weights(cfg: Mapping, landmarks: bool) -> LossWeights:
    """The config's loss weights, with the landmark term on (its configured weight) or off."""
    weights = LossWeights.from_config(cfg["loss"])
    return weights if landmarks else dataclasses.replace(weights, land=0.0)


def run_training(cfg: Mapping, run_dir: Path, model: FaceModel, encoder_name: str, data, evaluate_factory,
                 iterations: int, n_evals: int, landmarks: bool = False,
                 init_from: Path | None = None) -> tuple[pd.DataFrame, torch.nn.Module]:
    """Train one encoder and return (metrics table, trained encoder).

    evaluate_factory(decoder, device) -> (encoder -> dict of metrics); init_from: encoder weights to
    start from (e.g. a synthetic run) instead of the config's backbone weights.
    """
    device = select_device(cfg)
    decoder = training_decoder(cfg, model).to(device)
    encoder = make_encoder(cfg, encoder_name, decoder)
    if init_from is not None:
        encoder.load_state_dict(torch.load(init_from, map_location="cpu", weights_only=True))
    table = train(run_dir, encoder, decoder, data, settings_for(cfg, iterations, n_evals),
                  loss_weights(cfg, landmarks), evaluate_factory(decoder, device), device)
    return table, encoder
