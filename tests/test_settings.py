"""The typed settings layer (mofa/settings.py): each section's dataclass has exactly the schema's keys
and no default of its own, and a validated config turns into the values it holds."""
from __future__ import annotations

import dataclasses

import pytest

from mofa.config import load_config, load_schema, schema_default
from mofa.decoder import AMBIENT_OFFSET, PinholeCamera
from mofa.errors import MofaError
from mofa.losses import LossWeights
from mofa.settings import (BackgroundMix, EncoderSettings, FaceModelSettings, LightSettings, RealDataSettings, Settings,
                           SyntheticSettings, TRAINING_OVERRIDES, TrainingSection, load_settings)

SECTIONS = {("face_model",): FaceModelSettings, ("light",): LightSettings, ("synthetic",): SyntheticSettings,
            ("synthetic", "background_mix"): BackgroundMix, ("training",): TrainingSection,
            ("real_data",): RealDataSettings, ("camera",): PinholeCamera, ("loss",): LossWeights}


def schema_keys(*path: str) -> list[str]:
    node = load_schema()
    for key in path:
        node = node["properties"][key]
    return list(node["properties"])


@pytest.mark.parametrize("path", list(SECTIONS), ids=".".join)
def test_each_section_dataclass_has_the_schema_keys(path):
    assert [f.name for f in dataclasses.fields(SECTIONS[path])] == schema_keys(*path)


def test_encoder_settings_have_the_encoder_options_keys():
    assert [f.name for f in dataclasses.fields(EncoderSettings)] == list(load_schema()["$defs"]["encoder_options"]["properties"])


def test_the_settings_dataclasses_define_no_default_of_their_own():
    for cls in (*[c for c in SECTIONS.values() if c.__module__ == "mofa.settings"], EncoderSettings, Settings):
        own = [f.name for f in dataclasses.fields(cls)
               if f.name != "raw" and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)]
        assert own == [], f"{cls.__name__} defines defaults for {own}"
    # where the library's own dataclasses keep keyword defaults, they are the schema's
    assert PinholeCamera().image_size == schema_default("camera", "image_size")
    assert PinholeCamera().focal_length_px == schema_default("camera", "focal_length_px")
    assert LossWeights().photo == schema_default("loss", "photo") and LossWeights().reg == schema_default("loss", "reg")
    assert AMBIENT_OFFSET == schema_default("light", "ambient_offset")


def test_from_config_holds_the_config_values():
    cfg = load_config("default", {"training.lr": 0.25, "camera.focal_length_px": 900, "synthetic.background_mix.noise": 0.5})
    settings = Settings.from_config(cfg)
    assert settings.training.lr == 0.25 and settings.camera.focal_length_px == 900.0
    assert settings.synthetic.background_mix.noise == 0.5
    assert settings.face_model.name == cfg["face_model"]["name"] and settings.preset == "default"
    assert settings.loss == LossWeights.from_config(cfg["loss"])
    assert set(settings.encoders) >= {"alexnet", "dlib_resnet"}
    assert settings.raw is cfg


def test_for_encoder_applies_that_encoders_training_overrides():
    settings = load_settings("default", {"encoders.dlib_resnet.lr": 3.0e-4, "encoders.dlib_resnet.input_size": 160})
    own = settings.for_encoder("dlib_resnet")
    assert (own.training.lr, own.training.input_size) == (3.0e-4, 160)
    assert settings.training.lr != 3.0e-4  # the settings it came from are unchanged
    alexnet, own = settings.encoders["alexnet"], settings.for_encoder("alexnet").training
    for key in TRAINING_OVERRIDES:
        assert getattr(own, key) == (getattr(alexnet, key) if getattr(alexnet, key) is not None
                                     else getattr(settings.training, key)), key


def test_a_section_that_does_not_match_is_one_line_naming_the_key():
    cfg = load_config("ci")
    del cfg["light"]["ambient_offset"]
    with pytest.raises(MofaError, match=r"missing key 'light.ambient_offset'"):
        Settings.from_config(cfg)
    cfg = load_config("ci")
    cfg["training"]["stray"] = 1
    with pytest.raises(MofaError, match=r"unknown key 'training.stray'"):
        Settings.from_config(cfg)
    with pytest.raises(MofaError, match=r"encoders.nonesuch: not configured"):
        load_settings("ci").encoder("nonesuch")
