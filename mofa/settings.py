"""Typed settings: the validated config (`mofa.config.load_config`) as frozen dataclasses, one per
section the library reads, built once by `Settings.from_config` at a boundary (a stage, a command).

Every field takes its value from the config, whose missing keys the schema (presets/schema.yaml)
fills with their defaults; no field here has a default of its own, and `from_config` refuses a section
whose keys differ from its dataclass's fields (tests/test_settings.py checks each against the schema).
The experiment sections (e1-e8) are read by their stages, from `Settings.raw`.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from mofa.decoder.camera import PinholeCamera
from mofa.errors import MofaError
from mofa.losses import LossWeights


@dataclasses.dataclass(frozen=True)
class FaceModelSettings:
    """face_model: which linear face model, its files, how many modes, the training region and the cache."""
    name: str
    path: str | None
    expression_path: str | None
    landmarks_path: str | None
    n_shape: int
    n_expression: int
    n_reflectance: int
    face_region: str
    cache_dir: str


@dataclasses.dataclass(frozen=True)
class LightSettings:
    """light: the constant added to every channel's band-0 SH coefficient."""
    ambient_offset: float


@dataclasses.dataclass(frozen=True)
class BackgroundMix:
    """synthetic.background_mix: relative weights of the background kinds."""
    procedural: float
    noise: float
    colour_field: float
    folder: float


@dataclasses.dataclass(frozen=True)
class SyntheticSettings:
    """synthetic: the sizes, seed, rendering and code distribution of the synthetic sets
    (`mofa.data.synthetic.generate`); distribution: the section's mapping, for `CodeDistribution`."""
    n_train: int
    n_test: int
    seed: int
    render_region: str
    supersample: int
    image_noise_std: float
    workers: int
    background_folder: str | None
    background_mix: BackgroundMix
    distribution: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class TrainingSection:
    """training: how every encoder trains (the trainer's `TrainSettings` per run come from it)."""
    batch_size: int
    optimiser: str
    lr: float
    lr_z: float
    backbone_lr_scale: float
    rho: float
    eps: float
    precision: str
    checkpoint_every: int
    input_size: int
    rotation_bound_deg: float | None
    blur_sigma_px: float
    blur_until: float
    eval_images: int


@dataclasses.dataclass(frozen=True)
class EncoderSettings:
    """encoders.<name>: where the encoder comes from and what of training it overrides (None: training's)."""
    module: str | None
    weights_path: str | None
    random_init: str
    dropout: float | None
    options: Mapping[str, Any]
    optimiser: str | None
    lr: float | None
    lr_z: float | None
    backbone_lr_scale: float | None
    input_size: int | None


@dataclasses.dataclass(frozen=True)
class RealDataSettings:
    """real_data: the embedded photographs and how they are prepared."""
    aflw2000_root: str | None
    ibug68_root: str | None
    max_images: int | None
    eval_fraction: float
    split_seed: int
    margin: float
    min_face_px: int
    gt_box_fallback: bool


# encoders.<name> keys that, where set, replace training's for that encoder (`encoder_config`).
TRAINING_OVERRIDES = ("optimiser", "lr", "lr_z", "backbone_lr_scale", "input_size")


def encoder_config(cfg: Mapping, name: str) -> dict:
    """A copy of the config with training.<key> replaced by encoders.<name>.<key> where that is set (not
    null), for each of TRAINING_OVERRIDES: how this encoder trains (a pre-trained trunk with Adam, say,
    beside the paper's AdaDelta for the others)."""
    out = copy.deepcopy(dict(cfg))
    options = cfg["encoders"].get(name, {})
    for key in TRAINING_OVERRIDES:
        if options.get(key) is not None:
            out["training"][key] = options[key]
    return out


@dataclasses.dataclass(frozen=True)
class Settings:
    """The validated config, typed. raw: the config mapping itself (experiment sections, provenance,
    hashing); camera: the decoder's `PinholeCamera`; loss: the configured `LossWeights` (the landmark
    term at its configured weight; experiments switch it off)."""
    preset: str
    seed: int
    device: str
    processes: int
    results_dir: str
    face_model: FaceModelSettings
    camera: PinholeCamera
    light: LightSettings
    synthetic: SyntheticSettings
    loss: LossWeights
    training: TrainingSection
    encoders: Mapping[str, EncoderSettings]
    real_data: RealDataSettings
    raw: Mapping[str, Any] = dataclasses.field(repr=False, compare=False)

    @classmethod
    def from_config(cls, cfg: Mapping) -> "Settings":
        """From a config that `mofa.config.validate_config` has checked and filled."""
        values = {}
        for field in dataclasses.fields(cls):
            if field.name == "raw":
                continue
            if field.name not in cfg:
                raise MofaError(f"config: missing key '{field.name}' (validate the config first: "
                                "mofa.config.load_config)")
            values[field.name] = _typed(_hints(cls)[field.name], cfg[field.name], field.name)
        return cls(**values, raw=cfg)

    def for_encoder(self, name: str) -> "Settings":
        """These settings with encoders.<name>'s training overrides applied (`encoder_config`)."""
        return Settings.from_config(encoder_config(self.raw, name))

    def encoder(self, name: str) -> EncoderSettings:
        """encoders.<name>, a MofaError naming the key when the config has no such encoder."""
        if name not in self.encoders:
            raise MofaError(f"encoders.{name}: not configured (known: {', '.join(self.encoders)})")
        return self.encoders[name]


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _typed(kind: Any, value: Any, key: str) -> Any:
    """A config value as the field's type: a section dataclass from its mapping (its keys exactly the
    fields), PinholeCamera and LossWeights from theirs, a mapping of EncoderSettings per name."""
    if kind is PinholeCamera:
        return PinholeCamera(image_size=int(value["image_size"]), focal_length_px=float(value["focal_length_px"]),
                             distance_mm=float(value["distance_mm"]),
                             translation_scale_mm=float(value["translation_scale_mm"]))
    if kind is LossWeights:
        return LossWeights.from_config(value)
    if typing.get_origin(kind) is Mapping and typing.get_args(kind)[1] is EncoderSettings:
        return {name: _typed(EncoderSettings, section, f"{key}.{name}") for name, section in value.items()}
    if dataclasses.is_dataclass(kind):
        names = [f.name for f in dataclasses.fields(kind)]
        missing = [n for n in names if n not in value]
        unknown = [k for k in value if k not in names]
        if missing or unknown:
            raise MofaError(f"config section '{key}': " + "; ".join(
                [f"missing key '{key}.{n}'" for n in missing] + [f"unknown key '{key}.{k}'" for k in unknown]))
        hints = _hints(kind)
        return kind(**{n: _typed(hints[n], value[n], f"{key}.{n}") for n in names})
    return value


def load_settings(path_or_preset, overrides: Mapping | None = None) -> Settings:
    """`mofa.config.load_config(path_or_preset, overrides)`, typed."""
    from mofa.config import load_config
    return Settings.from_config(load_config(path_or_preset, overrides))


__all__ = ["BackgroundMix", "EncoderSettings", "FaceModelSettings", "LightSettings", "RealDataSettings", "Settings",
           "SyntheticSettings", "TRAINING_OVERRIDES", "TrainingSection", "encoder_config", "load_settings"]
