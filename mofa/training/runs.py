"""Training runs from the typed settings (`mofa.settings`): the one place that turns them into an
encoder, a decoder, loss weights and the trainer's settings, so every experiment trains the same way."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import torch

from mofa.config import select_device
from mofa.decoder import Decoder
from mofa.encoders import build_encoder, card
from mofa.facemodel.model import FaceModel
from mofa.losses import LossWeights
from mofa.settings import Settings
from mofa.training.distributed import is_main
from mofa.training.precision import resolve_precision
from mofa.training.trainer import Schedule, TrainSettings, train


def training_decoder(settings: Settings, model: FaceModel) -> Decoder:
    """The decoder over the training face region, with the configured camera and light."""
    return Decoder(model.submesh(model.face_region), settings.camera, ambient_offset=settings.light.ambient_offset)


def make_encoder(settings: Settings, name: str, decoder: Decoder, seed: int | None = None) -> torch.nn.Module:
    """The named encoder for this decoder's code layout, from the weights the settings name (if any)."""
    own = settings.encoder(name)
    return build_encoder(name, decoder.layout, weights_path=own.weights_path,
                         rotation_bound_rad=card.rotation_bound_rad(settings.training.rotation_bound_deg),
                         seed=settings.seed if seed is None else seed, random_init=own.random_init,
                         dropout=own.dropout, module=own.module, options=own.options)


def settings_for(settings: Settings, iterations: int, n_evals: int, progress: bool = True,
                 schedule: Schedule = Schedule()) -> TrainSettings:
    """TrainSettings with `n_evals` evenly spaced evaluations (plus iteration 0)."""
    tr = settings.training
    step = max(1, iterations // max(1, n_evals))
    return TrainSettings(iterations=iterations, batch_size=tr.batch_size, optimiser=tr.optimiser, lr=tr.lr,
                         lr_z=tr.lr_z, backbone_lr_scale=tr.backbone_lr_scale,
                         rho=tr.rho, eps=tr.eps, eval_at=tuple(range(step, iterations + 1, step)),
                         checkpoint_every=tr.checkpoint_every, input_size=tr.input_size,
                         seed=settings.seed, blur_sigma_px=tr.blur_sigma_px, blur_until=tr.blur_until,
                         schedule=schedule, precision=resolve_precision(tr.precision, select_device(settings.device)),
                         progress=progress)


def loss_weights(settings: Settings, landmarks: bool) -> LossWeights:
    """The configured loss weights, with the landmark term on (its configured weight) or off."""
    return settings.loss if landmarks else dataclasses.replace(settings.loss, land=0.0)


def run_training(settings: Settings, run_dir: Path, model: FaceModel, encoder_name: str, data, evaluate_factory,
                 iterations: int, n_evals: int, landmarks: bool = False,
                 init_from: Path | None = None,
                 schedule: Schedule = Schedule()) -> tuple[pd.DataFrame, torch.nn.Module]:
    """Train one encoder and return (metrics table, trained encoder).

    settings: with the encoder's training overrides applied (`Settings.for_encoder`);
    evaluate_factory(decoder, device) -> (encoder -> dict of metrics); init_from: encoder weights to
    start from (e.g. a synthetic run) instead of the configured backbone weights; schedule: what trains
    when (`Schedule.from_config` reads it from an experiment's section).
    """
    device = select_device(settings.device)
    decoder = training_decoder(settings, model).to(device)
    encoder = make_encoder(settings, encoder_name, decoder)
    if init_from is not None:
        card.load_weights(encoder, card.read_weights(init_from)[0], init_from, encoder_name)
        encoder.init_description = f"started from the weights {init_from}"
    if is_main():
        write_encoder_card(run_dir, settings, encoder_name, decoder, encoder)
    table = train(run_dir, encoder, decoder, data, settings_for(settings, iterations, n_evals, schedule=schedule),
                  loss_weights(settings, landmarks), evaluate_factory(decoder, device),
                  device)
    return table, encoder


def write_encoder_card(run_dir: Path, settings: Settings, encoder_name: str, decoder: Decoder, encoder) -> Path:
    """encoder.json beside the weights (`mofa.encoders.card`): what is needed to use them, so that
    `mofa reconstruct` needs nothing else."""
    return card.write_card(run_dir, card.make_card(settings, encoder_name, decoder.layout.sizes, encoder.init_description))


def load_encoder(settings: Settings, name: str, decoder: Decoder, path: str | Path) -> tuple[torch.nn.Module, int | None]:
    """A trained encoder from `path`: the final weights of a run (encoder.pt, a state dict) or a
    trainer checkpoint (checkpoint.pt). Returns (encoder in eval mode, the input size it was trained
    at, read from the checkpoint or the encoder.json beside the weights; None when neither says)."""
    state, trained = card.read_weights(path)
    found = card.read_card(card.card_path(path))
    trained = trained or found or None
    own = settings.encoders.get(name)
    encoder = build_encoder(name, decoder.layout,
                            rotation_bound_rad=card.rotation_bound_rad(settings.training.rotation_bound_deg),
                            seed=settings.seed, module=own.module if own else None,
                            options=found.get("options", own.options if own else None))  # the architecture it was trained with
    card.load_weights(encoder, state, path, name)
    encoder.init_description = f"trained weights from {path}"
    return encoder.eval(), (int(trained["input_size"]) if trained and "input_size" in trained else None)


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
    if not (key_file.is_file() and key_file.read_bytes() == text.encode()):  # an edited or damaged key: start over
        for name in (CHECKPOINT, METRICS, FINAL):
            (folder / name).unlink(missing_ok=True)
        write_text(key_file, text)
