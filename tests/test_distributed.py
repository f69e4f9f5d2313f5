"""Training on two processes (torchrun, gloo, one thread each) gives one process's weights and curves,
and a checkpoint written by either resumes on the other to the uninterrupted run's."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from interrupt import DiesAt, Killed  # tests/interrupt.py
import torch
from torch import nn

from mofa.data.synthetic import CodeDistribution, SyntheticSet, generate_split
from mofa.decoder import Decoder, PinholeCamera
from mofa.encoders import CodeHead, Encoder, build_encoder, register_encoder
from mofa.errors import MofaError
from mofa.losses import LossWeights
from mofa.training.distributed import relaunch_command, shares
from mofa.training.evaluate import synthetic_evaluator
from mofa.training.trainer import CHECKPOINT, FINAL, METRICS, Schedule, TrainSettings, train

WORKER = Path(__file__).with_name("ddp_worker.py")
STAGE_ARGS = ["--config", "ci", "--log", "unused.log"]  # must reach the worker as a stage's arguments would
# Batch 5 on two processes: shares of 3 and 2 images (the loss weighting matters); roll held for the
# first half (the schedule runs per share). Not fit_light: the light solve is per image, but its float32
# normal equations round differently for 3, 2 and 5 images, by up to 1.2e-3 of a light coefficient
# (its error against float64 is 1.8e-3 either way), which training carries on.
SETTINGS = TrainSettings(iterations=4, batch_size=5, eval_at=(2,), checkpoint_every=2, input_size=64, seed=0,
                         schedule=Schedule(hold=("roll",), hold_until=0.5), progress=False)
LOSS = LossWeights()
# The two processes sum their images' gradients in another order than one process does, in float32:
# the weights must agree to RTOL of each tensor's largest weight (measured: see the test's printout).
RTOL = 1e-5


@register_encoder("ddp_tiny")
class TinyNet(Encoder):
    """A small encoder with what makes a batch matter: dropout 0.5 (the paper's AlexNet and VGG have
    it; the masks must be one process's) and data-dependent buffers set by `calibrate` (every process
    must train with the same)."""
    head_prefix = "head"

    def __init__(self, layout, rotation_bound_rad=None):
        super().__init__(layout)
        self.features = nn.Sequential(nn.Conv2d(3, 16, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                                      nn.Dropout(0.5), nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.5))
        self.head = CodeHead(128, layout, rotation_bound_rad)
        self.register_buffer("feature_mean", torch.zeros(128))
        self.register_buffer("calibrated", torch.tensor(False))

    def embed(self, normalised):
        return self.features(normalised) - self.feature_mean

    @property
    def needs_calibration(self) -> bool:
        return not bool(self.calibrated)

    @torch.no_grad()
    def calibrate(self, images):
        self.eval()
        self.feature_mean.copy_(self.features(self.normalise(images)).mean(0))
        self.train()
        self.calibrated.fill_(True)


def fresh_encoder(decoder):
    return build_encoder("ddp_tiny", decoder.layout, rotation_bound_rad=1.0, seed=0)


@pytest.fixture(scope="module")
def setup(ict_model, tmp_path_factory):
    model = ict_model.truncated(8, 10, 8)
    root = tmp_path_factory.mktemp("ddp")
    camera = PinholeCamera()
    for split, n in (("train", 16), ("test", 4)):
        generate_split(root, split, n, model, camera, seed=0, dist=CodeDistribution(), progress=False)
    decoder = Decoder(model.submesh(model.face_region), camera)
    torch.save(decoder, root / "decoder.pt")
    return root, decoder, SyntheticSet(root / "train"), SyntheticSet(root / "test")


def torchrun(spec: dict, folder: Path, processes: int = 2) -> str:
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(relaunch_command(processes, "ddp_worker", [str(spec_path), *STAGE_ARGS]), env=env | {
        "PYTHONPATH": os.pathsep.join([str(WORKER.parent), env.get("PYTHONPATH", "")])},
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}"
    return done.stdout


def weight_gaps(a: Path, b: Path, start: dict) -> tuple[float, float, float]:
    """Over the weight tensors: the largest |b - a|, that over the tensor's largest |a|, and that over
    how far training moved the tensor from `start` (max |a - start|)."""
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert x.keys() == y.keys() == start.keys()
    gaps = [((x[k].double() - y[k].double()).abs().max(), x[k].double().abs().max(),
             (x[k].double() - start[k].double()).abs().max()) for k in x if x[k].is_floating_point()]
    return (float(max(g for g, _, _ in gaps)), float(max(g / max(m, 1e-30) for g, m, _ in gaps)),
            float(max(g / max(d, 1e-30) for g, _, d in gaps)))


def assert_same_curves(a: Path, b: Path) -> None:
    x, y = pd.read_csv(a / METRICS), pd.read_csv(b / METRICS)
    columns = [c for c in x.columns if c != "seconds"]
    assert list(y.columns) == list(x.columns) and list(x.iteration) == [0, 2, 4]
    pd.testing.assert_frame_equal(y[columns], x[columns], check_exact=False, atol=1e-5, rtol=1e-4)


def test_two_processes_equal_one_and_resume_across(setup, tmp_path):
    root, decoder, train_set, test_set = setup
    evaluate = synthetic_evaluator(decoder, test_set, 4, SETTINGS.input_size)
    one, one_cut, two, two_cut = (tmp_path / name for name in ("one", "one_cut", "two", "two_cut"))
    train(one, fresh_encoder(decoder), decoder, train_set, SETTINGS, LOSS, evaluate)
    with pytest.raises(Killed):  # dies in iteration 4, after the checkpoint of iteration 2
        train(one_cut, fresh_encoder(decoder), decoder, DiesAt(train_set, 3), SETTINGS, LOSS, evaluate)

    start = time.perf_counter()
    out = torchrun({"decoder": str(root / "decoder.pt"), "train": str(root / "train"), "test": str(root / "test"),
                    "runs": [{"run_dir": str(two), "dies_after": None},
                             {"run_dir": str(two_cut), "dies_after": 3},
                             {"run_dir": str(one_cut), "dies_after": None}]}, tmp_path)  # resumes one_cut
    print(f"torchrun, 2 processes: {time.perf_counter() - start:.1f} s")
    assert out.count("killed as asked") == 2, out  # both ranks stopped in the same iteration
    assert torch.load(two_cut / CHECKPOINT, weights_only=True)["iteration"] == 2
    assert not list(tmp_path.glob("*/*.tmp"))
    train(two_cut, fresh_encoder(decoder), decoder, train_set, SETTINGS, LOSS, evaluate)  # one process resumes

    start_weights = fresh_encoder(decoder).state_dict()
    for other in (two, two_cut, one_cut):
        gap, rel, moved = weight_gaps(one / FINAL, other / FINAL, start_weights)
        print(f"{other.name} vs one process: max abs weight difference {gap:.3g}, max relative to the tensor's "
              f"largest weight {rel:.3g}, to how far training moved it {moved:.3g}")
        assert rel < RTOL, (other, gap, rel, moved)
        assert_same_curves(one, other)
    final = torch.load(one / FINAL, weights_only=True)
    assert bool(final["calibrated"]) and float(final["feature_mean"].abs().max()) > 0
    assert float((final["head.others.weight"] - start_weights["head.others.weight"]).abs().max()) > 1e-4  # it trained


def test_weighted_shares_give_the_global_batch_gradient(setup):
    """The maths without torchrun: each share's loss weighted by `World.scaled`, with global-batch dropout
    masks, summed over the shares and averaged as DDP does, is the gradient of the whole batch."""
    from mofa.losses import mofa_loss
    from mofa.training.distributed import World, _swap_dropout
    from mofa.training.trainer import encoder_input
    _, decoder, train_set, _ = setup
    images = train_set.batch(np.arange(5))["images"]
    start = fresh_encoder(decoder).state_dict()
    start = {k: v + 1e-3 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) if k.startswith("head.")
             else v for k, v in start.items()}  # a non-zero head, so the backbone gets a gradient

    def gradient(world: World, part: slice) -> dict:
        encoder = fresh_encoder(decoder)
        encoder.load_state_dict(start)
        if world.size > 1:
            _swap_dropout(encoder, (part, 5))
        torch.manual_seed(7)
        world.scaled(mofa_loss(decoder, encoder(encoder_input(images[part], 64)), images[part]).total, 5).backward()
        return {k: p.grad for k, p in encoder.named_parameters()}

    whole = gradient(World(), slice(0, 5))
    for size in (2, 3):
        grads = [gradient(World(r, size), part) for r, part in enumerate(shares(5, size))]
        for k, g in whole.items():
            torch.testing.assert_close(sum(x[k] for x in grads) / size, g, rtol=0, atol=1e-5 * float(g.abs().max()))
    assert float(whole["features.5.weight"].abs().max()) > 0


def test_shares_of_a_batch():
    assert shares(5, 2) == [slice(0, 3), slice(3, 5)]
    assert shares(4, 4) == [slice(i, i + 1) for i in range(4)]
    with pytest.raises(MofaError, match="cannot be shared by 3 processes"):
        shares(2, 3)


def test_a_one_process_stage_refuses_torchrun(monkeypatch, capsys):
    import logging

    from pipelines import _stage
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        assert _stage.main("face_model", lambda cfg: {}, "test", ["--config", "ci"]) == 2
    finally:  # the stage's logging setup replaces the root handlers
        root.handlers[:] = handlers
        root.setLevel(level)
    assert "stage face_model runs in one process: start it without torchrun" in capsys.readouterr().err
