"""An encoder of your own: registered by a module the config names, trained and used like the built-in ones."""
from __future__ import annotations

import json
import sys
import textwrap

import pandas as pd
import pytest
import torch

from mofa.config import load_config
from mofa.decoder.layout import CodeLayout
from mofa.encoders import ENCODERS, build_encoder
from mofa.errors import MofaError

NAME, MODULE = "tiny_test_net", "mofa_test_own_encoder"
SOURCE = f'''
import torch
from torch import nn
from mofa.encoders import CodeHead, Encoder, register_encoder


@register_encoder("{NAME}")
class TinyNet(Encoder):
    head_prefix = "head"

    def __init__(self, layout, rotation_bound_rad=None):
        super().__init__(layout)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.head = CodeHead(8 * 16, layout, rotation_bound_rad)

    def embed(self, normalised):
        return self.features(normalised)
'''


@pytest.fixture
def own_module(tmp_path, monkeypatch):
    """A module file that registers NAME when imported, on sys.path (not imported yet)."""
    (tmp_path / f"{MODULE}.py").write_text(textwrap.dedent(SOURCE))
    (tmp_path / "registers_nothing.py").write_text("x = 1\n")
    (tmp_path / "broken_module.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield MODULE
    ENCODERS.pop(NAME, None)
    for module in (MODULE, "registers_nothing", "broken_module"):
        sys.modules.pop(module, None)


OWN = {f"encoders.{NAME}.module": MODULE, "e1.encoders": [NAME]}


def test_config_takes_an_own_encoder_with_its_module_and_fills_its_defaults():
    cfg = load_config("ci", {**OWN, "e3.encoders": [NAME], f"e3.{NAME}.iterations": 3, "e7.encoders": [NAME, "alexnet"]})
    assert cfg["encoders"][NAME] == {"module": MODULE, "weights_path": None, "random_init": "pytorch", "dropout": None,
                                     "options": {}, "optimiser": None, "lr": None, "lr_z": None,
                                     "backbone_lr_scale": None, "input_size": None}
    assert cfg["e3"][NAME] == {"iterations": 3, "batch_size": None, "input_size": None, "lr": None}
    plain = load_config("ci", {**OWN, "e3.encoders": [NAME]})  # no e3 section of its own: the schema's defaults
    assert plain["e3"][NAME] == {"iterations": 200000, "batch_size": None, "input_size": None, "lr": None}
    assert load_config("ci")["encoders"]["alexnet"]["module"] is None


@pytest.mark.parametrize("overrides, message", [
    ({"encoders.alexnett.weights_path": "w.pth"},
     "encoders.alexnett: not a built-in encoder (alexnet, vgg_face, dlib_resnet); an encoder of your own names the module"),
    ({"e1.encoders": ["resnet"]}, "e1.encoders: unknown encoder 'resnet' (known: alexnet, vgg_face, dlib_resnet; add "
                                  "your own under encoders.resnet.module)"),
    ({"e1.evaluatons": 3}, "unknown key 'e1.evaluatons' (e1 takes encoders, evaluations"),
    ({"e3.encoders": ["alexnet", "resnet"]}, "e3.encoders: unknown encoder 'resnet'"),
    ({"e7.encoders": ["resnet"]}, "e7.encoders: unknown encoder 'resnet'"),
    ({"e3.evaluatons": 3}, "unknown key 'e3.evaluatons' (e3 takes alexnet, dlib_resnet, encoders, evaluations"),
    ({**OWN, f"e3.{NAME}.iterations": 3}, f"unknown key 'e3.{NAME}'"),  # a schedule for an encoder E3 does not train
    ({f"encoders.{NAME}.module": MODULE, f"encoders.{NAME}.dropout": 1.5}, f"encoders.{NAME}.dropout: 1.5 is greater"),
])
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(MofaError, match="^mofa/presets/ci.yaml \\+ overrides: ") as error:
        load_config("ci", overrides)
    assert message in str(error.value)


def test_build_encoder_imports_the_module_that_registers_it(own_module):
    layout = CodeLayout(n_shape=5, n_expression=4, n_reflectance=6)
    with pytest.raises(MofaError, match=f"unknown encoder '{NAME}'"):
        build_encoder(NAME, layout)  # not imported, and no module named
    encoder = build_encoder(NAME, layout, module=own_module, seed=3)
    assert type(encoder).__name__ == "TinyNet" and NAME in ENCODERS
    assert torch.equal(encoder(torch.rand(2, 3, 64, 64)), torch.zeros(2, layout.size))  # zero-initialised head
    with pytest.raises(MofaError, match="encoders.other.module: importing 'registers_nothing' registered no encoder "
                                        "named 'other': decorate its Encoder subclass with @register_encoder"):
        build_encoder("other", layout, module="registers_nothing")
    with pytest.raises(MofaError, match="encoders.other.module: cannot import 'broken_module' \\(RuntimeError: boom\\)"):
        build_encoder("other", layout, module="broken_module")
    with pytest.raises(MofaError, match="cannot import 'no_such_module_here' \\(ModuleNotFoundError"):
        build_encoder("other", layout, module="no_such_module_here")


def test_e1_and_e7_train_and_time_an_own_encoder_and_its_weights_reload(own_module, ict_dir, tmp_path):
    from mofa.bench import bench_infer
    from mofa.facemodel import build_face_model
    from mofa.reconstruct import Reconstructor
    from mofa.settings import Settings
    from pipelines import e1_synthetic, e7_speed, synthetic

    cfg = load_config("ci", {**OWN, "results_dir": str(tmp_path / "results"), "synthetic.n_train": 8,
                             "synthetic.n_test": 2, "training.batch_size": 2, "training.eval_images": 2,
                             "e1.iterations": 4, "e1.evaluations": 2})
    synthetic.run(cfg)
    metrics = e1_synthetic.run(cfg)
    assert metrics[f"{NAME}_encoder_init"] == "random init (seed 0), no pre-trained weights"
    table = e1_synthetic.outputs(cfg)["table"].read_text()
    assert f"{NAME}: random init (seed 0)" in table.splitlines()[0]
    run = e1_synthetic.run_dir(cfg, NAME)
    card = json.loads((run / "encoder.json").read_text())
    assert (card["encoder"], card["module"]) == (NAME, MODULE)

    ENCODERS.pop(NAME)  # as in a fresh process: the card's module registers it again
    sys.modules.pop(MODULE)
    loaded = Reconstructor.from_checkpoint(run / "encoder.pt")
    state = torch.load(run / "encoder.pt", weights_only=True)
    assert type(loaded.encoder).__name__ == "TinyNet"
    assert all(torch.equal(loaded.encoder.state_dict()[k], v) for k, v in state.items())
    assert any(v.abs().sum() > 0 for k, v in state.items() if k.startswith("head."))  # it trained

    settings = Settings.from_config(cfg)
    rows = bench_infer(build_face_model(settings.face_model), settings.camera, encoders=[NAME], batch_sizes=[2],
                       input_size=64, repeats=1, options=settings.encoders)
    assert [(r["encoder"], r["batch"]) for r in rows] == [(NAME, 2)] and rows[0]["ms_per_image"] > 0

    ENCODERS.pop(NAME)
    sys.modules.pop(MODULE)
    e7 = load_config("ci", {**OWN, "results_dir": str(tmp_path / "results"), "e7.encoders": [NAME, "alexnet"],
                            "e7.batch_sizes": [1], "e7.repeats": 1})
    e7_speed.run(e7)
    speed = pd.read_csv(e7_speed.outputs(e7)["table"], comment="#").set_index("encoder")
    # one row per encoder and precision (bf16 rows too where the CPU runs bf16 natively)
    assert (speed.loc[["alexnet"], "paper_inference_ms"] == 4).all()  # the paper timed AlexNet ...
    assert speed.loc[[NAME], "paper_inference_ms"].isna().all() and (speed.loc[[NAME], "images_per_s"] > 0).all()  # ... not yours
