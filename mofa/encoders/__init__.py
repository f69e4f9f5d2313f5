"""Encoders: image -> code. A CNN backbone whose last layer is a zero-initialised code regressor.

Add an encoder in one place: subclass `Encoder` (see `head.py`), decorate it with
`@register_encoder("name")`, and `build_encoder("name", layout)` builds it, from a seeded random init or
from a pre-trained state dict. The pipeline finds an encoder of your own through the config key
`encoders.<name>.module`, the module to import (`build_encoder(..., module=)`).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

import torch

from mofa.decoder.layout import CodeLayout
from mofa.encoders.alexnet import AlexNetEncoder
from mofa.encoders.dlib_resnet import DlibResNetEncoder
from mofa.encoders.head import IMAGENET_MEAN, IMAGENET_STD, CodeHead, Encoder
from mofa.encoders.vgg import VGGFaceEncoder, convert_vgg_face_state_dict
from mofa.errors import MofaError

ENCODERS: dict[str, type[Encoder]] = {"alexnet": AlexNetEncoder, "vgg_face": VGGFaceEncoder,
                                      "dlib_resnet": DlibResNetEncoder}

_KEYS_SHOWN = 5


def register_encoder(name: str) -> Callable[[type[Encoder]], type[Encoder]]:
    """Class decorator: make an `Encoder` subclass buildable as `build_encoder(name, ...)`. Its
    constructor takes (layout, rotation_bound_rad=None)."""
    def register(cls: type[Encoder]) -> type[Encoder]:
        if not (isinstance(cls, type) and issubclass(cls, Encoder)):
            raise TypeError(f"register_encoder({name!r}) needs an Encoder subclass, got {cls!r}")
        if ENCODERS.get(name, cls) is not cls:
            raise ValueError(f"an encoder named {name!r} is already registered ({ENCODERS[name].__name__})")
        ENCODERS[name] = cls
        return cls
    return register


def ensure_registered(name: str, module: str | None = None) -> None:
    """Import `module` (a dotted module path whose import registers encoders) unless `name` is
    registered already; MofaError when the import fails or registers no encoder of that name."""
    if name in ENCODERS or module is None:
        return
    try:
        importlib.import_module(module)
    except Exception as error:  # noqa: BLE001 - any failure of the user's module is reported the same way
        raise MofaError(f"encoders.{name}.module: cannot import {module!r} ({type(error).__name__}: {error}); "
                        f"it must be importable from the working directory or PYTHONPATH") from None
    if name not in ENCODERS:
        raise MofaError(f"encoders.{name}.module: importing {module!r} registered no encoder named {name!r}: "
                        f"decorate its Encoder subclass with @register_encoder({name!r})")


RANDOM_INITS = ("pytorch", "kaiming")


def kaiming_init_(encoder: Encoder) -> Encoder:
    """Re-draw every convolution and linear layer of the backbone (not the code head) from He et al.'s
    normal init for ReLU networks (fan-in), biases 0, from the global RNG. PyTorch's default init
    (what torchvision's AlexNet uses) shrinks activations layer by layer: on synthetic faces AlexNet's
    fc7 features average |f| = 0.005 with it and 1.2 with this one, and the code head (whose AdaDelta
    steps have a fixed size per weight) moves the code in proportion to them."""
    head = encoder.head_prefix + "."
    for name, module in encoder.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and not (name + ".").startswith(head):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    return encoder


def build_encoder(name: str, code_layout: CodeLayout, weights_path: str | Path | None = None,
                  rotation_bound_rad: float | None = None, seed: int = 0, random_init: str = "pytorch",
                  dropout: float | None = None, module: str | None = None, options: dict | None = None) -> Encoder:
    """The encoder `name` with a zero-initialised code head of `code_layout.size` outputs.

    Backbone: seeded random init (the global RNG is left untouched; `random_init` "pytorch" = each
    layer's default, as torchvision; "kaiming" = `kaiming_init_`), or, with `weights_path`, a
    pre-trained state dict (its last layer is dropped: the code head replaces it). `dropout`: the
    probability of every `nn.Dropout` in training mode (None keeps the architecture's, 0.5 for
    AlexNet and VGG as in torchvision; it has no weights, so any value loads the same files). `module`:
    imported first when `name` is not registered yet (`ensure_registered`). `options`: keyword arguments
    of the encoder's constructor (e.g. dlib_resnet's stage)."""
    ensure_registered(name, module)
    if name not in ENCODERS:
        raise MofaError(f"unknown encoder {name!r}: choose one of {', '.join(sorted(ENCODERS))}")
    if random_init not in RANDOM_INITS:
        raise MofaError(f"unknown random_init {random_init!r} for encoder {name!r}: choose one of {', '.join(RANDOM_INITS)}")
    if weights_path is not None:
        _check_weights_file(Path(weights_path))  # fail before building a large network
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise MofaError(f"dropout for encoder {name!r} must be in [0, 1), got {dropout}")
    # An encoder with `loads_own_weights` (dlib_resnet) reads its pre-trained weights in its constructor,
    # from weights_path (its own file format) or its default file; random_init does not apply to it.
    own_weights = getattr(ENCODERS[name], "loads_own_weights", False)
    kwargs = dict(options or {}) | ({"weights_path": weights_path} if own_weights else {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            encoder = ENCODERS[name](code_layout, rotation_bound_rad=rotation_bound_rad, **kwargs)
        except TypeError as error:
            raise MofaError(f"encoders.{name}.options {dict(options or {})}: {error}") from None
        if not own_weights:
            if random_init == "kaiming" and weights_path is None:
                kaiming_init_(encoder)
    if not own_weights:
        encoder.pretrained = False
        encoder.init_description = (f"random init (seed {seed}{', He/Kaiming normal' if random_init == 'kaiming' else ''}), "
                                    f"no pre-trained weights")
    if dropout is not None:
        set_dropout(encoder, dropout)
        encoder.init_description += f"; dropout {dropout:g}"
    if weights_path is not None and not own_weights:
        load_backbone_weights(encoder, weights_path)
    return encoder


def set_dropout(encoder: torch.nn.Module, p: float) -> torch.nn.Module:
    """Set the probability of every `nn.Dropout` in `encoder` to p (in place)."""
    for module in encoder.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = float(p)
    return encoder


def _first(keys, limit: int = _KEYS_SHOWN) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _check_weights_file(path: Path) -> None:
    if not path.is_file():
        raise MofaError(f"encoder weights file {path} not found: check the encoder weights path in the "
                        f"config, or leave it empty to start from a random init")


def load_backbone_weights(encoder: Encoder, path: str | Path) -> None:
    """Copy a pre-trained state dict (raw, or under 'state_dict') into `encoder`, except its last layer.

    Loads without executing code (`weights_only=True`). Every backbone key must be present with the
    right shape and no other key may appear: otherwise MofaError naming the file and the keys."""
    path = Path(path)
    _check_weights_file(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same user problem
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MofaError(f"{path}: not a readable PyTorch state dict ({first_line}); expected a file "
                        f"written by torch.save(model.state_dict())") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MofaError(f"{path}: expected a state dict (parameter name -> tensor) or {{'state_dict': ...}}, "
                        f"got {type(state).__name__}")
    if state and all(key.startswith("module.") for key in state):  # saved from DataParallel
        state = {key[len("module."):]: value for key, value in state.items()}
    state = encoder.adapt_state_dict(state)

    head = encoder.head_prefix + "."
    own = {key: value for key, value in encoder.state_dict().items() if not key.startswith(head)}
    given = {key: value for key, value in state.items() if not key.startswith(head)}
    wrong_shape = [f"{key} {tuple(given[key].shape)} (expected {tuple(value.shape)})"
                   for key, value in own.items() if key in given and given[key].shape != value.shape]
    if wrong_shape:
        raise MofaError(f"{path}: shape mismatch for {type(encoder).__name__}: {_first(wrong_shape, 3)}; "
                        f"are these weights for a different network?")
    missing = [key for key in own if key not in given]
    unexpected = [key for key in given if key not in own]
    if missing or unexpected:
        problems = ([f"missing keys: {_first(missing)}"] if missing else []) + \
                   ([f"unexpected keys: {_first(unexpected)}"] if unexpected else [])
        raise MofaError(f"{path}: does not fit {type(encoder).__name__} ({'; '.join(problems)}); "
                        f"expected torchvision layer names such as {_first(own, 3)}")
    with torch.no_grad():
        for key, value in encoder.state_dict().items():
            if key in given:
                value.copy_(given[key])
    encoder.pretrained = True
    encoder.init_description = (f"pre-trained weights from {path.name}, last layer replaced by a "
                                f"zero-initialised code regressor")


__all__ = ["ENCODERS", "RANDOM_INITS", "kaiming_init_", "IMAGENET_MEAN", "IMAGENET_STD", "AlexNetEncoder", "CodeHead",
           "DlibResNetEncoder", "Encoder",
           "VGGFaceEncoder", "build_encoder", "convert_vgg_face_state_dict", "load_backbone_weights",
           "ensure_registered", "register_encoder"]
