"""The scorecard (mofa/scorecard.py) on small synthetic tables: every claim reaches each of its verdicts,
and a missing table reads "not measured at this scale"."""
from __future__ import annotations

import pandas as pd
import pytest

from mofa.scorecard import (CLAIMS, DOES_NOT_HOLD, GN_LAND, GN_NOLAND, HOLDS, MEAN_FACE, NOT_MEASURED,
                            read_tables, scorecard)


def e1(end_geometric: float) -> pd.DataFrame:
    rows = [("geometric_error", 20.0, end_geometric), ("photometric_error", 0.3, 0.2), ("landmark_error", 30.0, 10.0),
            ("rotation_error", 10.0, 20.0)]  # rotation is not one of the paper's three
    return pd.DataFrame([{"metric": m, "ours_start": s, "ours_end": e, "encoder": enc} for enc in ("alexnet", "dlib_resnet")
                         for m, s, e in rows])


def e2(end: float) -> pd.DataFrame:
    return pd.DataFrame({"encoder": ["AlexNet"] * 2 + ["dlib ResNet"] * 2, "iteration": [0, 10, 0, 10],
                         "landmark_error_mean": [12.0, 9.0, 11.0, end]})


def e3(alexnet_land: float, face_noland: float) -> pd.DataFrame:
    return pd.DataFrame({"encoder": ["alexnet", "alexnet", "dlib_resnet", "dlib_resnet"],
                         "landmark_loss": ["no", "yes", "no", "yes"],
                         "landmark_error": [10.0, alexnet_land, face_noland, 6.0]})


def e4(noland: float, encoder_ms: float) -> pd.DataFrame:
    return pd.DataFrame({"dataset": ["synthetic"] * 4, "method": [MEAN_FACE, GN_LAND, GN_NOLAND, "E1 AlexNet"],
                         "geometric_error_mean": [20.0, 8.0, noland, 9.0], "landmark_error_mean": [1.0] * 4,
                         "ms_per_image": [float("nan"), 500.0, 480.0, encoder_ms],
                         "speedup_over_gauss_newton": [float("nan")] * 3 + [500.0 / encoder_ms]})


def e5(conv_outputs: str) -> pd.DataFrame:
    return pd.DataFrame({"method": ["conv autoencoder", "model-based (AlexNet)"], "photometric_error": [0.05, 0.1],
                         "semantic_outputs": [conv_outputs, "pose, shape, expression, reflectance, light"]})


def e6(learned_ssim: float) -> pd.DataFrame:
    return pd.DataFrame({"method": ["analytic decoder", "learned decoder"], "ssim": [0.8, learned_ssim]})


GOOD = {"e1_synthetic": e1(9.0), "e2_real_curves": e2(8.0), "e3_variants": e3(7.0, 8.0), "e4_baselines": e4(19.0, 4.0),
        "e5_conv_autoencoder": e5("none"), "e6_learned_decoder": e6(0.6)}
# per claim (in CLAIMS order): the tables that make it fail
BAD = [{"e1_synthetic": e1(25.0)}, {"e2_real_curves": e2(13.0)}, {"e3_variants": e3(11.0, 8.0)},
       {"e3_variants": e3(7.0, 12.0)}, {"e4_baselines": e4(9.0, 4.0)}, {"e4_baselines": e4(19.0, 40.0)},
       {"e5_conv_autoencoder": e5("pose")}, {"e6_learned_decoder": e6(0.9)}]


def test_every_claim_holds_on_tables_that_show_it():
    card = scorecard(GOOD)
    assert card.columns.tolist() == ["experiment", "claim", "paper", "ours", "verdict"]
    assert card["experiment"].tolist() == ["E1", "E2", "E3", "E3", "E4", "E4", "E5", "E6"]
    assert card["verdict"].tolist() == [HOLDS] * len(CLAIMS), card.to_string()
    assert card.loc[0, "ours"].startswith("alexnet: 20 -> 9, 0.3 -> 0.2, 30 -> 10")
    assert "125x" in card.loc[5, "paper"] and "125x" in card.loc[5, "ours"]
    assert "21.6 -> 4.5 mm" in card.loc[0, "paper"]


@pytest.mark.parametrize("claim", range(len(CLAIMS)))
def test_each_claim_can_fail_alone(claim):
    card = scorecard(GOOD | BAD[claim])
    expected = [HOLDS] * len(CLAIMS)
    expected[claim] = DOES_NOT_HOLD
    assert card["verdict"].tolist() == expected, card.to_string()


def test_missing_tables_and_rows_are_not_measured():
    assert scorecard({})["verdict"].eq(NOT_MEASURED).all()
    # E3 without a face-pretrained encoder: its landmark-loss claim is measured, the encoder claim is not
    alexnet_only = GOOD | {"e3_variants": e3(7.0, 8.0).iloc[:2]}
    card = scorecard(alexnet_only)
    assert card["verdict"].tolist()[2:4] == [HOLDS, NOT_MEASURED]
    assert "face-pretrained" in card.loc[3, "ours"]
    # a table without the columns a claim reads is not measured either, and says why
    card = scorecard(GOOD | {"e6_learned_decoder": pd.DataFrame({"method": ["analytic decoder", "learned decoder"]})})
    assert card.loc[7, "verdict"] == NOT_MEASURED and "ssim" in card.loc[7, "ours"]


def test_read_tables_skips_the_title_line(tmp_path):
    (tmp_path / "e6_learned_decoder.csv").write_text("# E6 title; preset ci, config x\nmethod,ssim\n"
                                                     "analytic decoder,0.8\nlearned decoder,0.5\n")
    tables = read_tables(tmp_path)
    assert list(tables) == ["e6_learned_decoder"]
    assert scorecard(tables).loc[7, "verdict"] == HOLDS
