"""Training runs from the config: the one place that turns config sections into an encoder, a decoder,
loss weights and training settings, so every experiment trains the same way."""
from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import torch

from mofa.config import camera_from_config, select_device
from mofa.decoder import Decoder
from mofa.encoders import build_encoder, card
from mofa.facemodel.model import FaceModel
from mofa.losses import LossWeights
from mofa.training.distributed import is_main
from mofa.training.precision import resolve_precision
from mofa.training.trainer import Schedule, TrainSettings, train


def training_decoder(cfg: Mapping, model: FaceModel) -> Decoder:
    """The decoder over the training face region, with the config's camera and light."""
    return Decoder(model.submesh(model.face_region), camera_from_config(cfg),
                   ambient_offset=cfg["light"]["ambient_offset"])


def make_encoder(cfg: Mapping, name: str, decoder: Decoder, seed: int | None = None) -> torch.nn.Module:
    """The named encoder for this decoder's code layout, from the weights the config names (if any)."""
    options = cfg["encoders"][name]
    return build_encoder(name, decoder.layout, weights_path=options["weights_path"],
                         rotation_bound_rad=card.rotation_bound_rad(cfg["training"]["rotation_bound_deg"]),
                         seed=cfg["seed"] if seed is None else seed, random_init=options["random_init"],
                         dropout=options["dropout"], module=options["module"], options=options["options"])


# encoders.<name> keys that, where set, replace training's for that encoder (`encoder_config`).
TRAINING_OVERRIDES = ("optimiser", "lr", "lr_z", "backbone_lr_scale", "input_size")


def encoder_config(cfg: Mapping, name: str) -> dict:
    """The config with training.<key> replaced by encoders.<name>.<key> where that is set (not null),
    for each of TRAINING_OVERRIDES: how this encoder trains (a pre-trained trunk with Adam, say, beside
    the paper's AdaDelta for the others)."""
    out = copy.deepcopy(dict(cfg))
    options = cfg["encoders"].get(name, {})
    for key in TRAINING_OVERRIDES:
        if options.get(key) is not None:
            out["training"][key] = options[key]
    return out


def settings_for(cfg: Mapping, iterations: int, n_evals: int, progress: bool = True,
                 schedule: Schedule = Schedule()) -> TrainSettings:
    """TrainSettings with `n_evals` evenly spaced evaluations (plus iteration 0)."""
    tr = cfg["training"]
    step = max(1, iterations // max(1, n_evals))
    return TrainSettings(iterations=iterations, batch_size=tr["batch_size"], optimiser=tr["optimiser"], lr=tr["lr"],
                         lr_z=tr["lr_z"], backbone_lr_scale=tr["backbone_lr_scale"],
                         rho=tr["rho"], eps=tr["eps"], eval_at=tuple(range(step, iterations + 1, step)),
                         checkpoint_every=tr["checkpoint_every"], input_size=tr["input_size"],
                         seed=cfg["seed"], blur_sigma_px=tr["blur_sigma_px"], blur_until=tr["blur_until"],
                         schedule=schedule, precision=resolve_precision(tr["precision"], select_device(cfg)),
                         progress=progress)


def loss_weights(cfg: Mapping, landmarks: bool) -> LossWeights:
    """The config's loss weights, with the landmark term on (its configured weight) or off."""
    weights = LossWeights.from_config(cfg["loss"])
    return weights if landmarks else dataclasses.replace(weights, land=0.0)


def run_training(cfg: Mapping, run_dir: Path, model: FaceModel, encoder_name: str, data, evaluate_factory,
                 iterations: int, n_evals: int, landmarks: bool = False,
                 init_from: Path | None = None,
                 schedule: Schedule = Schedule()) -> tuple[pd.DataFrame, torch.nn.Module]:
    """Train one encoder and return (metrics table, trained encoder).

    evaluate_factory(decoder, device) -> (encoder -> dict of metrics); init_from: encoder weights to
    start from (e.g. a synthetic run) instead of the config's backbone weights; schedule: what trains
    when (`Schedule.from_config` reads it from an experiment's section).
    """
    device = select_device(cfg)
    decoder = training_decoder(cfg, model).to(device)
    encoder = make_encoder(cfg, encoder_name, decoder)
    if init_from is not None:
        card.load_weights(encoder, card.read_weights(init_from)[0], init_from, encoder_name)
        encoder.init_description = f"started from the weights {init_from}"
    if is_main():
        write_encoder_card(run_dir, cfg, encoder_name, decoder, encoder)
    table = train(run_dir, encoder, decoder, data, settings_for(cfg, iterations, n_evals, schedule=schedule),
                  loss_weights(cfg, landmarks), evaluate_factory(decoder, device),
                  device)
    return table, encoder


def write_encoder_card(run_dir: Path, cfg: Mapping, encoder_name: str, decoder: Decoder, encoder) -> Path:
    """encoder.json beside the weights (`mofa.encoders.card`): what is needed to use them, so that
    `mofa reconstruct` needs nothing else."""
    return card.write_card(run_dir, card.make_card(cfg, encoder_name, decoder.layout.sizes, encoder.init_description))


def load_encoder(cfg: Mapping, name: str, decoder: Decoder, path: str | Path) -> tuple[torch.nn.Module, int | None]:
    """A trained encoder from `path`: the final weights of a run (encoder.pt, a state dict) or a
    trainer checkpoint (checkpoint.pt). Returns (encoder in eval mode, the input size it was trained
    at, read from the checkpoint or the encoder.json beside the weights; None when neither says)."""
    state, settings = card.read_weights(path)
    found = card.read_card(card.card_path(path))
    settings = settings or found or None
    options = cfg["encoders"].get(name, {})
    encoder = build_encoder(name, decoder.layout, rotation_bound_rad=card.rotation_bound_rad(cfg["training"]["rotation_bound_deg"]),
                            seed=cfg["seed"], module=options.get("module"),
                            options=found.get("options", options.get("options")))  # the architecture it was trained with
    card.load_weights(encoder, state, path, name)
    encoder.init_description = f"trained weights from {path}"
    return encoder.eval(), (int(settings["input_size"]) if settings and "input_size" in settings else None)


RUN_KEY = "run_key.json"


def prepare_run_dir(folder: Path, key: dict) -> None:
    """Keep a run folder, so that training resumes its checkpoint, only when everything it was made from
    is the same (its run_key.json: config sections, data, code, initial weights); else empty it.

    The checkpoint holds the curves so far, so a run resumes also where a workflow engine deleted the
    stage's declared outputs (metrics.csv, encoder.pt) before running it again after a kill. Under
    torchrun rank 0 does it (`train` waits for it).
    """
    from mofa.io import remove_stale_temporaries, write_text
    from mofa.training.trainer import CHECKPOINT, FINAL, METRICS
    if not is_main():
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)  # a checkpoint being written when the last run was killed
    key_file = folder / RUN_KEY
    text = json.dumps(key, indent=2, sort_keys=True) + "\n"
    if not (key_file.is_file() and key_file.read_text() == text):
        for name in (CHECKPOINT, METRICS, FINAL):
            (folder / name).unlink(missing_ok=True)
        write_text(key_file, text)
