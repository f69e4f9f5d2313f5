"""E5 (conv autoencoder, Fig. 12) and E6 (learned decoder, Fig. 13): the comparison helpers of
baselines/compare.py on constructed cases, and the two stages end to end at the ci preset on a tiny
synthetic set. (Training lowers each network's loss and their shapes follow the code layout:
tests/test_baselines.py.)"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from baselines.compare import WithFaceRegion, face_masks, region_at
from mofa.config import REPO_ROOT, load_config
from mofa.decoder import Decoder, PinholeCamera
from mofa.errors import MofaError


def test_region_at_keeps_pixels_wholly_inside():
    mask = torch.zeros(2, 240, 240, dtype=torch.bool)
    mask[0, 30:90, 30:90] = True  # 60 px at 240: at 60 px (4 per pixel) rows 8..21 lie wholly inside
    small = region_at(mask, 60)
    assert small.shape == (2, 60, 60) and small.dtype == torch.bool
    assert small[0].sum() == 14 * 14 and small[0, 8:22, 8:22].all()
    assert not small[1].any()
    assert torch.equal(region_at(mask, 240), mask)


def test_with_face_region_batches_carry_their_masks(tmp_path, small_face_model):
    from mofa.data.synthetic import CodeDistribution, SyntheticSet, generate_split
    camera = PinholeCamera(image_size=32, focal_length_px=107.0)
    generate_split(tmp_path, "train", 6, small_face_model, camera, seed=0, dist=CodeDistribution(), workers=1,
                   progress=False, background_mix={"colour_field": 1.0})
    split = SyntheticSet(tmp_path / "train")
    decoder = Decoder(small_face_model, camera)
    masks = face_masks(decoder, split.batch(range(6))["codes"], batch_size=4)
    assert masks.shape == (6, 32, 32) and 0 < masks.float().mean() < 1
    source = WithFaceRegion(split, region_at(masks, 16)[:5])
    assert len(source) == 5
    batch = source.batch([4, 0, 4])
    assert batch["masks"].shape == (3, 16, 16) and batch["images"].shape == (3, 3, 32, 32)
    assert torch.equal(batch["masks"][0], region_at(masks, 16)[4]) and torch.equal(batch["masks"][1], region_at(masks, 16)[0])
    assert torch.equal(batch["codes"], split.batch([4, 0, 4])["codes"])
    with pytest.raises(ValueError, match="masks for a split"):
        WithFaceRegion(split, masks.repeat(2, 1, 1))


def test_image_size_must_suit_four_stride_two_stages():
    with pytest.raises(MofaError, match="e5.image_size"):
        load_config("ci", {"e5.image_size": 40})


def test_e5_and_e6_stages_at_the_ci_preset(tmp_path, monkeypatch):
    """synthetic (8 + 3 images) -> e1_synthetic (1 iteration) -> e5_conv_autoencoder and
    e6_learned_decoder at the ci preset into a temporary results folder."""
    from pipelines import e1_synthetic, e5_conv_autoencoder, e6_learned_decoder, synthetic

    monkeypatch.chdir(REPO_ROOT)  # the ci preset's face model cache is results/cache
    cfg = load_config("ci", {"results_dir": str(tmp_path / "results"), "synthetic.n_train": 8, "synthetic.n_test": 3,
                             "e1.iterations": 1, "e1.evaluations": 1, "training.eval_images": 2})
    synthetic.run(cfg)
    e1_synthetic.run(cfg)
    # E1's per-image errors at the end are the values its table's last evaluation averaged
    from mofa.paper import display_name
    e1 = e1_synthetic.outputs(cfg)
    per_image, e1_table = pd.read_csv(e1["per_image"]), pd.read_csv(e1["table"], comment="#")
    assert len(per_image) == 2 * len(cfg["e1"]["encoders"]) and e1["spread_figure"].stat().st_size > 10_000
    means = per_image.groupby("encoder").mean(numeric_only=True)
    for row in e1_table.itertuples():
        assert means.loc[display_name(row.encoder), row.metric] == pytest.approx(row.ours_end, rel=1e-3)
    code_size = cfg["face_model"]["n_shape"] + cfg["face_model"]["n_expression"] + cfg["face_model"]["n_reflectance"] + 33

    metrics = e5_conv_autoencoder.run(cfg)
    out = e5_conv_autoencoder.outputs(cfg)
    assert all(path.is_file() for path in out.values()), [p for p in out.values() if not p.is_file()]
    assert json.loads(out["metrics"].read_text()) == metrics
    table = pd.read_csv(out["table"], comment="#")
    assert table["method"].tolist() == [e5_conv_autoencoder.CONV_AE, *map(e5_conv_autoencoder.model_based_name,
                                                                          cfg["e1"]["encoders"])]
    assert (table["images"] == 3).all() and (table["image_px"] == cfg["e5"]["image_size"]).all()
    assert np.isfinite(table[["photometric_error", "ssim"]].to_numpy()).all()
    assert (table["photometric_error"] > 0).all() and 0 < metrics["region_share_of_face"] <= 1
    assert metrics["conv_autoencoder_photometric_error"] == pytest.approx(table["photometric_error"][0], rel=1e-3)
    weights = torch.load(out["weights"], weights_only=True)
    assert weights["fc.weight"].shape[0] == code_size == weights["decoder.fc.weight"].shape[1]
    assert len(pd.read_csv(out["losses"])) == cfg["e5"]["iterations"]
    assert out["figure"].stat().st_size > 10_000

    metrics = e6_learned_decoder.run(cfg)
    out = e6_learned_decoder.outputs(cfg)
    assert all(path.is_file() for path in out.values()), [p for p in out.values() if not p.is_file()]
    assert json.loads(out["metrics"].read_text()) == metrics
    table = pd.read_csv(out["table"], comment="#").set_index("method")
    assert list(table.index) == [e6_learned_decoder.ANALYTIC, e6_learned_decoder.LEARNED]
    assert metrics["training_images"] == 8 and (table["images"] == 3).all()
    # The analytic decoder rendered the ground truth: only the images' noise (std 0.01) and rounding are left.
    assert table.loc[e6_learned_decoder.ANALYTIC, "l1"] < 0.02 and table.loc[e6_learned_decoder.ANALYTIC, "psnr"] > 30
    assert metrics["learned_l1"] > metrics["analytic_l1"] and metrics["analytic_higher_fidelity"]
    weights = torch.load(out["weights"], weights_only=True)
    assert weights["fc.weight"].shape[1] == code_size
    assert out["figure"].stat().st_size > 10_000
