"""A trained encoder's card: `encoder.json` beside its weights, written once by training and read by
everything that uses the weights (`mofa evaluate`, `mofa reconstruct`, E4, the reports). The card says
what the weights need: the encoder and its options, the code layout, the input size, the rotation bound,
the face model, camera and light, and the preset. This module is the one place that writes, reads and
loads it, with the errors."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mofa.errors import MofaError, one_line

if TYPE_CHECKING:
    from mofa.settings import Settings

CARD = "encoder.json"
WEIGHTS = "encoder.pt"
# Keys without which the card cannot rebuild the encoder and its decoder, with the JSON types they take.
REQUIRED = {"encoder": (str,), "code_layout": (dict,), "input_size": (int,), "rotation_bound_deg": (int, float, type(None)),
            "face_model": (dict,), "camera": (dict,), "light": (dict,), "preset": (str,)}
OPTIONAL = {"module": (str, type(None)), "options": (dict, type(None)), "init": (str,)}
_JSON_NAMES = {str: "a string", dict: "an object", int: "an integer", float: "a number", type(None): "null",
               list: "a list", bool: "true or false"}


def _type_problem(key: str, value: object, allowed: tuple[type, ...]) -> str | None:
    """What is wrong with a card entry's JSON type or value, or None."""
    if isinstance(value, bool) or not isinstance(value, allowed):  # JSON true is no number, as Python's is
        named = [_JSON_NAMES[t] for t in allowed if not (t is int and float in allowed)]  # an int is a number
        return f"'{key}' is {_JSON_NAMES.get(type(value), type(value).__name__)}, expected {' or '.join(named)}"
    if key == "code_layout" and not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                        for n in value.values()):
        return "'code_layout' must map each code part to a whole number of entries"
    if key == "input_size" and value < 1:
        return f"'input_size' is {value}, expected a positive number of pixels"
    return None


def card_path(weights: str | Path) -> Path:
    """The card beside a weights or checkpoint file."""
    return Path(weights).with_name(CARD)


def make_card(settings: "Settings", encoder_name: str, code_layout: Mapping[str, int], init: str) -> dict:
    """The card of an encoder trained under `settings` (encoders.<name> overrides already applied)."""
    own = settings.encoder(encoder_name)
    return {"encoder": encoder_name, "code_layout": dict(code_layout), "input_size": settings.training.input_size,
            "rotation_bound_deg": settings.training.rotation_bound_deg,
            "face_model": dataclasses.asdict(settings.face_model), "camera": dataclasses.asdict(settings.camera),
            "light": dataclasses.asdict(settings.light), "init": init, "preset": settings.preset,
            "module": own.module, "options": dict(own.options)}


def write_card(run_dir: str | Path, card: Mapping) -> Path:
    """run_dir/encoder.json, atomically."""
    from mofa.io import write_json
    return write_json(Path(run_dir) / CARD, dict(card), sort_keys=False)


def read_card(path: str | Path, required: bool = False) -> dict:
    """The card at `path` as a mapping: {} where there is none (a MofaError instead when `required`),
    a MofaError naming it when it is not a JSON object or, when required, lacks a REQUIRED key."""
    path = Path(path)
    if not path.is_file():
        if required:
            raise MofaError(f"{path}: missing; it says which encoder and face model the weights belong to")
        return {}
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MofaError(f"{path}: not a readable encoder card ({exc})") from None
    if not isinstance(card, dict):
        raise MofaError(f"{path}: not a readable encoder card (a JSON {type(card).__name__}, expected an object)")
    missing = [key for key in REQUIRED if key not in card] if required else []
    if missing:
        raise MofaError(f"{path}: encoder card without {', '.join(missing)}; it is written by training "
                        "(mofa.encoders.card.write_card)")
    for key, allowed in (REQUIRED | OPTIONAL).items():
        problem = _type_problem(key, card[key], allowed) if key in card else None
        if problem:
            raise MofaError(f"{path}: not a valid encoder card ({problem})")
    return card


@contextlib.contextmanager
def problems_named_by(path: str | Path, *named_already: str | Path) -> Iterator[None]:
    """A MofaError raised in the block by what a card holds (its preset, settings, encoder, options) names
    the card: `path` in front of its message, unless the message starts with `path` or `named_already`."""
    try:
        yield
    except MofaError as exc:
        if str(exc).startswith(tuple(map(str, (path, *named_already)))):
            raise
        raise MofaError(f"{path}: {exc}") from None


def check_input_size(encoder: torch.nn.Module, name: str, size: int, source: str | Path) -> None:
    """A MofaError naming `source` (a flag, a config key, a card) where `size` px is below the smallest
    input the encoder's backbone accepts: said before any crop is made, not from its forward pass."""
    if size < encoder.min_input_size:
        raise MofaError(f"{source}: input size {size} px, but the {name} encoder needs at least "
                        f"{encoder.min_input_size} px")


def weights_path(checkpoint: str | Path) -> Path:
    """The weights a --checkpoint names: the file itself, or a run folder's encoder.pt."""
    checkpoint = Path(checkpoint)
    return checkpoint / WEIGHTS if checkpoint.is_dir() else checkpoint


def rotation_bound_rad(degrees: float | None) -> float | None:
    """A card's or config's rotation_bound_deg in radians (None: unbounded)."""
    return None if degrees is None else math.radians(degrees)


def read_weights(path: str | Path) -> tuple[dict, dict | None]:
    """(state dict, the trainer's settings or None) from encoder weights: a run's final encoder.pt (a
    bare state dict; a run folder stands for it) or a trainer checkpoint.pt ({'encoder', 'settings',
    ...}); a MofaError naming the file when it is missing or unreadable."""
    given = Path(path)
    path = weights_path(given)
    if not path.is_file():
        if given.is_dir():
            raise MofaError(f"{given}: a folder without {WEIGHTS}; pass the weights file or a training run's folder")
        raise MofaError(f"{path}: checkpoint not found (run `make reproduce` or pass --checkpoint)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MofaError(f"{path}: unreadable weights, corrupt or not a PyTorch file ({one_line(exc)})") from None
    if isinstance(state, dict) and "encoder" in state and "settings" in state:
        return state["encoder"], state["settings"]
    return state, None


def load_weights(encoder: torch.nn.Module, state: Mapping, path: str | Path, name: str) -> torch.nn.Module:
    """encoder.load_state_dict(state), a MofaError naming `path` when the weights do not fit."""
    try:
        encoder.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError, KeyError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [""]
        detail = next((line for line in lines if line.startswith(("size mismatch", "Missing key", "Unexpected key"))),
                      lines[0])
        raise MofaError(f"{path}: not weights of a '{name}' encoder for this face model's code "
                        f"({type(exc).__name__}: {detail[:200]}{'...' if len(detail) > 200 else ''}); "
                        "check the encoder name and the config") from None
    return encoder
