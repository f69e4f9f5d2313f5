"""Training: a short run lowers the loss; an interrupted run resumes to the same numbers."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from interrupt import DiesAt, Killed  # tests/interrupt.py
import torch

from mofa.data.synthetic import CodeDistribution, SyntheticSet, generate_split
from mofa.decoder import Decoder, PinholeCamera
from mofa.encoders import build_encoder
from mofa.errors import MofaError
from mofa.losses import LossWeights, mofa_loss
from mofa.training.evaluate import synthetic_evaluator
from mofa.training.trainer import (CHECKPOINT, FINAL, METRICS, SCHEDULE_KEYS, Schedule, TrainSettings, blur_sigma,
                                   encoder_input, train)

CAMERA = PinholeCamera()


@pytest.fixture(scope="module")
def setup(ict_model, tmp_path_factory):
    model = ict_model.truncated(8, 10, 8)
    root = tmp_path_factory.mktemp("syn")
    for split, n in (("train", 24), ("test", 4)):
        generate_split(root, split, n, model, CAMERA, seed=0, dist=CodeDistribution(), progress=False)
    decoder = Decoder(model.submesh(model.face_region), CAMERA)
    return model, decoder, SyntheticSet(root / "train"), SyntheticSet(root / "test")


def fresh_encoder(decoder):
    return build_encoder("alexnet", decoder.layout, rotation_bound_rad=1.0, seed=0)


SETTINGS = TrainSettings(iterations=8, batch_size=4, eval_at=(4,), checkpoint_every=3, input_size=64,
                         seed=0, progress=False)


def batch_loss(encoder, decoder, data) -> float:
    batch = data.batch(np.arange(8))
    encoder.eval()
    with torch.no_grad():
        return float(mofa_loss(decoder, encoder(encoder_input(batch["images"], 64)), batch["images"]).total)


def test_short_training_run_lowers_the_loss(setup, tmp_path):
    _, decoder, train_set, _ = setup
    encoder = fresh_encoder(decoder)
    before = batch_loss(encoder, decoder, train_set)
    train(tmp_path, encoder, decoder, train_set, SETTINGS, LossWeights())
    after = batch_loss(encoder, decoder, train_set)
    assert after < 0.995 * before, (before, after)  # AdaDelta starts with tiny steps
    assert (tmp_path / FINAL).exists() and (tmp_path / CHECKPOINT).exists()


def test_interrupted_training_resumes_to_the_same_metrics(setup, tmp_path):
    _, decoder, train_set, test_set = setup
    evaluate = synthetic_evaluator(decoder, test_set, 4, 64)
    whole = train(tmp_path / "whole", fresh_encoder(decoder), decoder, train_set, SETTINGS, LossWeights(), evaluate)

    with pytest.raises(Killed):  # dies during iteration 8, after the checkpoint of iteration 6
        train(tmp_path / "cut", fresh_encoder(decoder), decoder, DiesAt(train_set, 7), SETTINGS, LossWeights(), evaluate)
    assert torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)["iteration"] == 6
    resumed = train(tmp_path / "cut", fresh_encoder(decoder), decoder, train_set, SETTINGS, LossWeights(), evaluate)

    metric_columns = [c for c in whole.columns if c != "seconds"]
    pd.testing.assert_frame_equal(whole[metric_columns], resumed[metric_columns])
    assert list(whole.iteration) == [0, 4, 8]
    a = torch.load(tmp_path / "whole" / FINAL, weights_only=True)
    b = torch.load(tmp_path / "cut" / FINAL, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    on_disk = pd.read_csv(tmp_path / "cut" / METRICS)
    assert list(on_disk.iteration) == [0, 4, 8]


def test_adam_with_a_slower_backbone_calibrates_once_and_resumes_exactly(setup, tmp_path):
    """The pretrained encoder's recipe: Adam, the backbone at a tenth of the head's rate, standardised
    features calibrated on the first training images before the first step; a resumed run repeats an
    uninterrupted one exactly (the calibration travels in the checkpoint)."""
    from mofa.training.trainer import make_optimiser
    _, decoder, train_set, test_set = setup
    settings = dataclasses.replace(SETTINGS, optimiser="adam", lr=1e-4, lr_z=1e-4, backbone_lr_scale=0.1,
                                   input_size=112, iterations=6, eval_at=(3,))

    def encoder():
        return build_encoder("dlib_resnet", decoder.layout, options={"standardise": True})

    optimiser = make_optimiser(encoder(), settings)
    assert isinstance(optimiser, torch.optim.Adam)
    assert [(g["name"], g["lr"]) for g in optimiser.param_groups] == [
        ("backbone", pytest.approx(1e-5)), ("head", 1e-4), ("z_translation", 1e-4)]
    evaluate = synthetic_evaluator(decoder, test_set, 4, 112)
    whole_encoder = encoder()
    whole = train(tmp_path / "whole", whole_encoder, decoder, train_set, settings, LossWeights(), evaluate)
    assert bool(whole_encoder.calibrated) and whole_encoder.feature_mean.abs().sum() > 0
    assert whole["train_visible_share"].dropna().between(0, 1).all()
    with pytest.raises(Killed):
        train(tmp_path / "cut", encoder(), decoder, DiesAt(train_set, 5), settings, LossWeights(), evaluate)
    resumed = train(tmp_path / "cut", encoder(), decoder, train_set, settings, LossWeights(), evaluate)
    metric_columns = [c for c in whole.columns if c != "seconds"]
    pd.testing.assert_frame_equal(whole[metric_columns], resumed[metric_columns])
    a = torch.load(tmp_path / "whole" / FINAL, weights_only=True)
    b = torch.load(tmp_path / "cut" / FINAL, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], v) for k, v in encoder().state_dict().items() if k.startswith("trunk"))
    with pytest.raises(MofaError, match="optimiser 'sgd'"):
        make_optimiser(encoder(), dataclasses.replace(settings, optimiser="sgd"))


def test_resume_with_other_settings_is_refused(setup, tmp_path):
    _, decoder, train_set, _ = setup
    short = dataclasses.replace(SETTINGS, iterations=3, eval_at=())
    train(tmp_path, fresh_encoder(decoder), decoder, train_set, short, LossWeights())
    with pytest.raises(MofaError, match="other training settings"):
        train(tmp_path, fresh_encoder(decoder), decoder, train_set,
              dataclasses.replace(short, lr=0.5), LossWeights())


def test_zero_code_evaluation_is_the_mean_face(setup):
    """At iteration 0 the zero-initialised head predicts the mean face: the geometric error is that
    of the mean face, computed here independently of the encoder."""
    model, decoder, _, test_set = setup
    evaluate = synthetic_evaluator(decoder, test_set, 4, 64)
    result = evaluate(fresh_encoder(decoder))
    from mofa.metrics import geometric_error
    mean_face = decoder(torch.zeros(4, decoder.code_size)).vertices
    expected = geometric_error(mean_face.detach().numpy(), test_set.batch(np.arange(4))["vertices"].numpy())
    assert result["geometric_error_mean"] == pytest.approx(float(expected.mean()), rel=1e-5)
    assert 0 < result["photometric_error_mean"] < 1 and result["landmark_error_mean"] > 0


def test_hold_keeps_the_held_entries_at_the_mean_face_until_released(setup, tmp_path):
    """hold ("roll", "tx", "expression") over the whole run: those outputs stay at the zero head's 0 while
    the rest of the code moves; released after half the run, they move too. An unknown name is an error
    naming the setting."""
    _, decoder, train_set, _ = setup
    images = train_set.batch(np.arange(4))["images"]
    held = decoder.layout.mask("roll", "tx", "expression")
    assert int(held.sum()) == 2 + decoder.layout.n_expression
    codes = {}
    for name, until in (("always", 1.0), ("half", 0.5)):
        encoder = fresh_encoder(decoder)
        settings = dataclasses.replace(SETTINGS, iterations=4, eval_at=(),
                                       schedule=Schedule(hold=("roll", "tx", "expression"), hold_until=until))
        train(tmp_path / name, encoder, decoder, train_set, settings, LossWeights())
        encoder.eval()
        with torch.no_grad():
            codes[name] = encoder(encoder_input(images, 64))
    assert torch.all(codes["always"][:, held] == 0)
    assert codes["always"][:, ~held].abs().max() > 0
    assert codes["half"][:, held].abs().max() > 0
    with pytest.raises(MofaError, match="hold: unknown code part 'nose'"):
        train(tmp_path / "bad", fresh_encoder(decoder), decoder, train_set,
              dataclasses.replace(SETTINGS, iterations=1, eval_at=(), schedule=Schedule(hold=("nose",), hold_until=1.0)), LossWeights())


def test_fit_light_trains_the_light_output_towards_each_images_fitted_light(setup, tmp_path):
    """With fit_light the photometric term sees each image's fitted light whatever the encoder's light
    output is, and that output learns the fitted light by regression: with the rest of the code held
    (at the mean face) over the whole run, it ends closer to the fitted light than the
    zero-initialised head's was."""
    from mofa.losses import with_fitted_light

    _, decoder, train_set, _ = setup
    images = train_set.batch(np.arange(8))["images"]
    encoder = fresh_encoder(decoder)
    settings = dataclasses.replace(SETTINGS, iterations=8, eval_at=(), schedule=Schedule(
        fit_light=2, hold=("shape", "expression", "reflectance", "rotation", "translation"), hold_until=1.0))
    light = decoder.layout.slices["light"]
    encoder.eval()
    with torch.no_grad():
        before = encoder(encoder_input(images, 64))
    target = with_fitted_light(decoder, before, images, 2)[:, light]
    other_light = before.clone()
    other_light[:, light] = 0.5
    torch.testing.assert_close(with_fitted_light(decoder, other_light, images, 2)[:, light], target)
    train(tmp_path, encoder, decoder, train_set, settings, LossWeights())
    encoder.eval()
    with torch.no_grad():
        after = encoder(encoder_input(images, 64))
    assert torch.all(after[:, ~decoder.layout.mask("light")] == 0)
    assert (after[:, light] - target).norm() < (before[:, light] - target).norm()


def test_blur_schedule_falls_linearly_from_the_first_iteration():
    plain = TrainSettings(iterations=100, blur_sigma_px=4.0, blur_until=0.5)
    assert [blur_sigma(plain, it) for it in (1, 26, 51, 100)] == [4.0, 2.0, 0.0, 0.0]
    short = dataclasses.replace(plain, blur_until=0.2)  # 20 iterations of blur decay from the first
    assert [blur_sigma(short, it) for it in (1, 11, 21, 100)] == [4.0, 2.0, 0.0, 0.0]
    assert blur_sigma(dataclasses.replace(plain, blur_sigma_px=0.0), 1) == 0.0  # off


def test_e1_titles_name_every_schedule_option():
    from mofa.config import load_config
    from pipelines.e1_synthetic import schedule_note

    assert schedule_note(load_config("ci"), "alexnet") == ""
    fitted = load_config("ci", {"e1.fit_light": 4})
    assert schedule_note(fitted, "alexnet", short=True) == ", own light fitted"
    assert "own best light" in schedule_note(fitted, "alexnet")
    held = load_config("ci", {"e1.hold": ["roll", "tx"], "e1.hold_until": 0.5, "e1.iterations": 40})
    assert schedule_note(held, "alexnet", short=True) == ", roll/tx held 20 its"
    assert schedule_note(held, "alexnet") == "; roll, tx got no gradient (kept the mean face's) for the first 20 iterations"
    both = load_config("ci", {"e1.fit_light": 4, "e1.hold": ["roll", "tx"], "e1.hold_until": 0.5, "e1.iterations": 40})
    assert schedule_note(both, "alexnet", short=True) == ", own light fitted, roll/tx held 20 its"
    # e1.<encoder> replaces e1's keys for that encoder only
    own = load_config("ci", {"e1.hold": ["roll"], "e1.hold_until": 0.5, "e1.iterations": 40,
                             "e1.dlib_resnet": {"hold": [], "iterations": 20}})
    assert schedule_note(own, "alexnet", short=True) == ", roll held 20 its"
    assert schedule_note(own, "dlib_resnet") == ""


def test_schedule_from_config_reads_each_sections_schedule_keys():
    """Schedule.from_config is the one place that turns an E1 section's keys into a Schedule: its three
    schedule keys (an encoder's own e1.<encoder> replacing e1's); E3 has none (its runs train with a
    plain Schedule)."""
    from mofa.config import load_config
    from pipelines.e1_synthetic import section

    e1 = load_config("default")["e1"]
    s = Schedule.from_config(e1)
    assert (s.fit_light, s.hold, s.hold_until) == (e1["fit_light"], tuple(e1["hold"]), e1["hold_until"])
    own = load_config("ci", {"e1.fit_light": 2, "e1.hold": ["roll"], "e1.hold_until": 0.5,
                             "e1.dlib_resnet": {"hold": ["tx"], "fit_light": 0}})
    assert Schedule.from_config(section(own, "alexnet")) == Schedule(fit_light=2, hold=("roll",), hold_until=0.5)
    assert Schedule.from_config(section(own, "dlib_resnet")) == Schedule(fit_light=0, hold=("tx",), hold_until=0.5)
    for preset in ("ci", "default", "paper"):
        assert not set(SCHEDULE_KEYS) & set(load_config(preset)["e3"])
