"""The real-data experiments: the mixed synthetic + real training source, the AFLW2000-3D evaluation
chain (crop -> image landmark projection, NME per yaw bin) on constructed cases, `mofa evaluate
aflw2000` on real AFLW2000-3D images, and the stages real_data -> e2_e3_real -> e8_qualitative on tiny
inputs. Real photos come from MOFA_AFLW2000_DIR and MOFA_IBUG68_DIR (a test that needs them fails,
never skips, without them)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mofa.config import REPO_ROOT, load_config
from mofa.decoder import Decoder, PinholeCamera
from mofa.errors import MofaError
from mofa.evaluation import aflw2000
from mofa.realdata.crop_policy import CropPolicy
from mofa.realdata.prepare import FORMAT_VERSION, MANIFEST_COLUMNS, RealFaceSet
from mofa.settings import Settings, load_settings
from mofa.training.mixed import MixedSource
from mofa.training.runs import RUN_KEY, prepare_run_dir

AFLW_IMAGES = ("image00002", "image00014", "image00046")  # near-frontal: Haar finds all three


# -- the mixed training source ------------------------------------------------------------------------

class FakeSet:
    """A synthetic-set or real-set stand-in: image i is filled with the value i / 255 (so a batch says
    which images it took), landmarks (i, i), confidence 0.5 or landmark_visible True/False."""

    def __init__(self, n: int, kind: str, size: int = 8):
        self.n, self.kind = n, kind
        self.arrays = {"images": np.zeros((n, size, size, 3), np.uint8)}
        self.size = size

    def __len__(self) -> int:
        return self.n

    def batch(self, indices, device="cpu"):
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.float32)
        b = len(idx)
        out = {"images": (idx / 255.0)[:, None, None, None].expand(b, 3, self.size, self.size).clone(),
               "landmarks": idx[:, None, None].expand(b, 68, 2).clone()}
        if self.kind == "synthetic":
            out["landmark_visible"] = (torch.arange(68) % 2 == 0).expand(b, 68).clone()
            out["vertices"] = torch.zeros(b, 5, 3)
        else:
            out["landmark_confidence"] = torch.full((b, 68), 0.5)
            out["gt_landmarks"] = torch.full((b, 68, 2), float("nan"))
        return out


def _taken(batch) -> np.ndarray:
    """Which image of its source each batch entry is."""
    return (batch["images"][:, 0, 0, 0] * 255).round().long().numpy()


def test_mixed_source_draws_the_configured_share_of_each_batch():
    synthetic, real = FakeSet(30, "synthetic"), FakeSet(7, "real")
    mix = MixedSource(synthetic, real, 0.25)
    assert len(mix) == 30 * 7
    indices = np.random.default_rng(0).choice(len(mix), 8, replace=False)
    batch = mix.batch(indices)
    assert set(batch) == {"images", "landmarks", "landmark_confidence", "is_synthetic"}
    assert batch["is_synthetic"].tolist() == [True] * 2 + [False] * 6  # round(0.25 * 8) synthetic, first
    np.testing.assert_array_equal(_taken(batch)[:2], indices[:2] // 7)
    np.testing.assert_array_equal(_taken(batch)[2:], indices[2:] % 7)
    # synthetic landmarks come with landmark_visible as their confidence, real ones with the detector's
    assert batch["landmark_confidence"][:2].tolist() == [[1.0, 0.0] * 34] * 2
    assert (batch["landmark_confidence"][2:] == 0.5).all()
    assert batch["landmarks"].dtype == torch.float32 and batch["landmarks"].shape == (8, 68, 2)
    # deterministic: the same indices give the same batch
    again = mix.batch(indices)
    for key in batch:
        assert torch.equal(batch[key], again[key]), key
    # every (synthetic, real) pair is one index: a uniform draw of indices is uniform over each source
    pairs = {(i // 7, i % 7) for i in range(len(mix))}
    assert len(pairs) == len(mix)
    assert mix.n_synthetic(5) == 1 and MixedSource(synthetic, real, 0.5).n_synthetic(4) == 2


def test_mixed_source_with_one_source_only_and_its_errors():
    synthetic, real = FakeSet(30, "synthetic"), FakeSet(7, "real")
    only_real, only_synthetic = MixedSource(synthetic, real, 0.0), MixedSource(synthetic, real, 1.0)
    assert len(only_real) == 7 and len(only_synthetic) == 30
    assert not only_real.batch([6, 0, 3])["is_synthetic"].any()
    assert _taken(only_real.batch([6, 0, 3])).tolist() == [6, 0, 3]
    assert only_synthetic.batch([29, 1])["is_synthetic"].all()
    assert _taken(only_synthetic.batch([29, 1])).tolist() == [29, 1]
    with pytest.raises(MofaError, match="within"):
        MixedSource(synthetic, real, 1.5)
    with pytest.raises(MofaError, match="real training split"):
        MixedSource(synthetic, FakeSet(0, "real"), 0.5)
    with pytest.raises(MofaError, match="camera's image size"):
        MixedSource(synthetic, FakeSet(7, "real", size=16), 0.5)
    with pytest.raises(IndexError):
        only_real.batch([7])


# -- the evaluation chain on constructed cases ---------------------------------------------------------

class FixedCode(torch.nn.Module):
    """An 'encoder' that answers every image with the same code."""

    def __init__(self, code: torch.Tensor):
        super().__init__()
        self.register_buffer("code", code)

    def forward(self, images):
        return self.code.expand(len(images), -1)


def write_prepared(folder: Path, images: np.ndarray, gt_crop: np.ndarray, transforms: np.ndarray,
                   yaw_deg, split: str = "eval") -> Path:
    """A prepared real-face folder (format of mofa/realdata/prepare.py) from arrays."""
    folder.mkdir(parents=True)
    n = len(images)
    np.save(folder / "images.npy", images.astype(np.uint8))
    np.save(folder / "landmarks.npy", gt_crop.astype(np.float32))
    np.save(folder / "landmark_confidence.npy", np.ones((n, 68), np.float32))
    np.save(folder / "gt_landmarks.npy", gt_crop.astype(np.float32))
    np.save(folder / "transforms.npy", transforms.astype(np.float64))
    manifest = pd.DataFrame({"index": np.arange(n), "id": [f"case/{i}" for i in range(n)], "source": "case",
                             "kept": True, "split": split, "yaw_deg": yaw_deg, "box_source": "haar"})
    manifest.reindex(columns=list(MANIFEST_COLUMNS)).to_csv(folder / "manifest.csv", index=False)
    (folder / "summary.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "total": n + 1, "kept": n,
                                                     "dropped": {"no face": 1}, "box_source": {"haar": n}}))
    return folder


@pytest.fixture
def constructed(small_face_model, tmp_path):
    """Five crops of 64 px whose ground truth is the predicted landmarks moved by a known offset, each
    with its own crop <- image transform, at yaws in every bin (and one beyond 90 degrees)."""
    camera = PinholeCamera(image_size=64, focal_length_px=300.0)
    decoder = Decoder(small_face_model, camera)
    code = torch.zeros(1, decoder.code_size)
    code[0, decoder.layout.slices["translation"]] = torch.tensor([0.4, -0.3, 0.0])
    with torch.no_grad():
        pred_crop = decoder(code).screen[0, decoder.landmarks].double().numpy()  # (68, 2)
    offsets = np.array([[3.0, 4.0], [0.0, 2.0], [6.0, 8.0], [1.0, 0.0], [0.0, 0.0]])  # crop px: |d| = 5, 2, 10, 1, 0
    scales = np.array([0.5, 0.25, 2.0, 1.0, 0.8])
    shifts = np.array([[-10.0, 5.0], [3.0, -7.0], [0.0, 0.0], [12.0, 1.5], [-2.0, -2.0]])
    transforms = np.stack([np.array([[s, 0, tx], [0, s, ty]]) for s, (tx, ty) in zip(scales, shifts)])
    gt_crop = pred_crop[None] + offsets[:, None, :]
    yaw = [10.0, -45.0, 75.0, -20.0, 120.0]
    folder = write_prepared(tmp_path / "prepared", np.zeros((5, 64, 64, 3)), gt_crop, transforms, yaw)
    return {"decoder": decoder, "encoder": FixedCode(code), "pred_crop": pred_crop, "offsets": offsets,
            "scales": scales, "shifts": shifts, "gt_crop": gt_crop, "folder": folder, "yaw": yaw}


def test_chain_projects_crop_landmarks_back_into_the_image(constructed):
    c = constructed
    per_image = aflw2000.evaluate_prepared(RealFaceSet(c["folder"], "eval"), c["encoder"], c["decoder"], input_size=64)
    assert per_image["id"].tolist() == [f"case/{i}" for i in range(5)]
    for i, (s, shift) in enumerate(zip(c["scales"], c["shifts"])):
        # crop = s * image + shift, inverted by hand
        np.testing.assert_allclose(per_image.attrs["pred_image_px"][i], (c["pred_crop"] - shift) / s, atol=1e-3)
        np.testing.assert_allclose(per_image.attrs["gt_image_px"][i], (c["gt_crop"][i] - shift) / s, atol=1e-3)
    # and back: image -> crop with the same transform gives the decoder's landmarks
    from mofa.realdata.detect import image_to_crop
    transforms = RealFaceSet(c["folder"], "eval").transforms
    np.testing.assert_allclose(image_to_crop(per_image.attrs["pred_image_px"], transforms),
                               np.broadcast_to(c["pred_crop"], (5, 68, 2)), atol=1e-3)
    # the 46-point error in crop px is the offset's length
    np.testing.assert_allclose(per_image["landmark_error_px"], np.linalg.norm(c["offsets"], axis=1), atol=1e-3)


def test_chain_nme_table_per_yaw_bin(constructed):
    c = constructed
    result = aflw2000.score(RealFaceSet(c["folder"], "eval"), c["encoder"], c["decoder"], input_size=64)
    # the NME is scale-free: |d| / s over sqrt(w h) / s of the crop's ground-truth box
    extent = c["gt_crop"].max(1) - c["gt_crop"].min(1)
    expected = np.linalg.norm(c["offsets"], axis=1) / np.sqrt(extent[:, 0] * extent[:, 1])
    np.testing.assert_allclose(result.per_image["nme"], expected, rtol=1e-4)
    assert result.per_image["yaw_bin"].tolist() == ["0-30", "30-60", "60-90", "0-30", "60-90"]  # 120: no cap
    table = result.table
    assert table["n_0-30"] == 2 and table["n_30-60"] == 1 and table["n_60-90"] == 2
    assert table["0-30"] == pytest.approx((expected[0] + expected[3]) / 2, rel=1e-4)
    assert table["30-60"] == pytest.approx(expected[1], rel=1e-4)
    assert table["60-90"] == pytest.approx((expected[2] + expected[4]) / 2, rel=1e-4)
    assert table["mean"] == pytest.approx((table["0-30"] + table["30-60"] + table["60-90"]) / 3)
    frame = result.table_frame()
    assert frame["bin"].tolist() == ["0-30", "30-60", "60-90", "mean"]
    assert frame["images"].tolist() == [2, 1, 2, 5]
    np.testing.assert_allclose(frame["nme_percent"], 100 * frame["nme"])
    report = result.report()
    assert "5 images scored" in report and "outside the bins" not in report


# -- mofa evaluate aflw2000 on real photos -----------------------------------------------------------------

def test_mofa_evaluate_aflw2000_scores_every_image_even_one_mediapipe_cannot_read(tmp_path, capsys, monkeypatch,
                                                                                 aflw_dir):
    """Three AFLW2000-3D photos and a noise image with a copy of one's .mat: Haar finds no face in the
    noise and MediaPipe none in its crop, which the training preparation would drop; the benchmark
    crops it from the ground-truth box and scores all four."""
    import cv2

    from mofa import cli
    from mofa.realdata.adapters import iter_aflw2000
    from mofa.realdata.benchmark_crops import BenchmarkCrops
    from mofa.realdata.landmarks68 import MediaPipeLandmarker
    from mofa.encoders import build_encoder
    from mofa.facemodel import build_face_model
    from mofa.training.runs import training_decoder

    root = tmp_path / "aflw"
    root.mkdir()
    for stem in AFLW_IMAGES:
        for suffix in (".jpg", ".mat"):
            shutil.copy(aflw_dir / f"{stem}{suffix}", root)
    noise = np.random.default_rng(0).integers(0, 256, (450, 450, 3), dtype=np.uint8)
    cv2.imwrite(str(root / "image99999.jpg"), noise)
    shutil.copy(aflw_dir / f"{AFLW_IMAGES[0]}.mat", root / "image99999.mat")
    crops = BenchmarkCrops(iter_aflw2000(root), CropPolicy(margin=0.4, min_face_px=64, image_size=240))
    assert crops.manifest.set_index("id").loc["aflw2000/image99999", "box_source"] == "gt"
    with MediaPipeLandmarker() as landmarker:
        assert landmarker.detect(crops.images[crops.ids.index("aflw2000/image99999")]) is None
    monkeypatch.chdir(REPO_ROOT)  # the ci preset's face model cache is results/cache
    settings = load_settings("ci")
    decoder = training_decoder(settings, build_face_model(settings.face_model))
    encoder = build_encoder("alexnet", decoder.layout)  # zero-initialised head: the mean face
    checkpoint = tmp_path / "run" / "encoder.pt"
    checkpoint.parent.mkdir()
    torch.save(encoder.state_dict(), checkpoint)
    out = tmp_path / "nme.csv"
    landmarks = tmp_path / "points" / "landmarks.csv"
    status = cli.main(["evaluate", "aflw2000", "--root", str(root), "--checkpoint", str(checkpoint),
                       "--config", "ci", "--out", str(out), "--landmarks-out", str(landmarks)])
    printed = capsys.readouterr().out
    assert status == 0, printed
    points = pd.read_csv(landmarks)
    assert points.columns.tolist() == ["name", *[f"x{k}" for k in range(68)], *[f"y{k}" for k in range(68)]]
    assert sorted(points["name"]) == sorted([*AFLW_IMAGES, "image99999"])
    # the exported points, scored against the files' own pt3d_68, give the printed table's NME
    from scipy.io import loadmat

    from mofa.metrics import nme_aflw2000
    gt = np.stack([loadmat(root / f"{n}.mat")["pt3d_68"][:2].T for n in points["name"]])
    pred = np.stack([points[[f"x{k}" for k in range(68)]].to_numpy(), points[[f"y{k}" for k in range(68)]].to_numpy()], -1)
    bins = pd.read_csv(out).set_index("bin").drop("mean")
    pooled = float((bins["nme"] * bins["images"]).sum() / bins["images"].sum())
    assert float(np.mean(nme_aflw2000(pred, gt))) == pytest.approx(pooled, rel=1e-3)
    assert "AFLW2000-3D NME" in printed and "4 in the folder, 4 scored" in printed and "gt 1" in printed
    table = pd.read_csv(out)
    assert table["bin"].tolist() == ["0-30", "30-60", "60-90", "mean"]
    assert table.loc[3, "images"] == 4 and table.loc[0, "images"] == 4  # the copied .mat's yaw is near frontal
    assert np.isfinite(table.loc[0, "nme"]) and 0 < table.loc[0, "nme"] < 1
    # with the encoder.json a training run writes beside its weights, the preset and encoder come from it
    from mofa.training.runs import write_encoder_card
    write_encoder_card(checkpoint.parent, settings, "alexnet", decoder, encoder)
    assert cli.main(["evaluate", "aflw2000", "--root", str(root), "--checkpoint", str(checkpoint)]) == 0
    assert "alexnet encoder" in capsys.readouterr().out
    # an --encoder the card contradicts, and without a card weights of another encoder: one clear line each
    status = cli.main(["evaluate", "aflw2000", "--root", str(root), "--checkpoint", str(checkpoint),
                       "--config", "ci", "--encoder", "vgg_face"])
    assert status == 2
    assert "--encoder vgg_face: the checkpoint's" in capsys.readouterr().err
    checkpoint.with_name("encoder.json").unlink()
    status = cli.main(["evaluate", "aflw2000", "--root", str(root), "--checkpoint", str(checkpoint),
                       "--config", "ci", "--encoder", "vgg_face"])
    assert status == 2
    assert "not weights of a 'vgg_face' encoder" in capsys.readouterr().err


def test_real_data_stage_names_the_environment_variable(monkeypatch):
    from pipelines import real_data
    monkeypatch.delenv("MOFA_AFLW2000_DIR", raising=False)
    with pytest.raises(MofaError, match="MOFA_AFLW2000_DIR is not set"):
        real_data.dataset_root(load_config("ci"), "aflw2000")
    cfg = load_config("ci", {"real_data.aflw2000_root": "/somewhere"})
    assert real_data.dataset_root(cfg, "aflw2000") == Path("/somewhere")


# -- the stages on tiny inputs -----------------------------------------------------------------------------

def test_real_data_e2_e3_e8_and_e4_stages_on_tiny_inputs(tmp_path, monkeypatch, aflw_dir, ibug_dir):
    """real_data -> e2_e3_real -> e8_qualitative -> e4_baselines with the ci preset cut down: 14 AFLW2000
    images (8 training, 2 eval), AlexNet only, 2 iterations per variant, started from stand-in E1 weights;
    E4 fits one image of each set with 2 Gauss-Newton steps."""
    from mofa.encoders import build_encoder
    from mofa.facemodel import build_face_model
    from mofa.training.runs import training_decoder
    from pipelines import e1_synthetic, e2_e3_real, e4_baselines, e8_qualitative, real_data, synthetic

    monkeypatch.chdir(REPO_ROOT)
    cfg = load_config("ci", {"results_dir": str(tmp_path / "results"), "synthetic.n_train": 4, "synthetic.n_test": 1,
                             "real_data.max_images": 14, "e1.encoders": ["alexnet"], "e3.encoders": ["alexnet"],
                             "e3.evaluations": 1,
                             "e3.alexnet.iterations": 2, "e8.max_photos": 2, "training.eval_images": 2,
                             "e4.steps": 2, "e4.real_images": 1})
    synthetic.run(cfg)
    e1_weights = e1_synthetic.outputs(cfg)["encoder_alexnet"]  # stands in for E1's run
    e1_weights.parent.mkdir(parents=True)
    settings = Settings.from_config(cfg)
    torch.save(build_encoder("alexnet", training_decoder(settings, build_face_model(settings.face_model)).layout,
                             seed=7).state_dict(),
               e1_weights)

    metrics = real_data.run(cfg)
    assert metrics["aflw2000_total"] == 14 and metrics["aflw2000_eval"] >= 1 and metrics["aflw2000_train"] >= 1
    assert all(path.is_file() for path in real_data.outputs(cfg).values())

    metrics = e2_e3_real.run(cfg)
    outputs = e2_e3_real.outputs(cfg)
    assert all(path.is_file() for path in outputs.values()), [p for p in outputs.values() if not p.is_file()]
    table = pd.read_csv(outputs["table"], comment="#")
    assert table["variant"].tolist() == ["AlexNet without landmarks", "AlexNet with landmarks"]
    assert table["paper_landmark_error"].tolist() == [5.3, 3.7]
    assert table["paper_photometric_error"].tolist() == [0.075, 0.078]
    assert np.isfinite(table[["landmark_error", "photometric_error", "nme_0-30_pct"]].to_numpy()).all()
    assert table["init"].str.contains("E1").all()
    curves = pd.read_csv(outputs["curves_table"], comment="#")
    assert curves["iteration"].tolist() == [0, 2] and curves["encoder"].eq("AlexNet").all()
    assert set(metrics) >= {"alexnet_noland_landmark_error", "alexnet_land_nme_mean_pct",
                            "alexnet_landmark_loss_lowers_landmark_error"}
    per_image = pd.read_csv(e2_e3_real.run_dir(cfg, "alexnet", True) / "aflw2000_nme.csv")
    # every eval-split image of the folder is scored, also those the training preparation dropped
    eval_ids = [s.id for s in real_data.split_samples(cfg, "aflw2000", "eval")]
    assert per_image["id"].tolist() == eval_ids and len(eval_ids) >= metrics_eval_images(cfg)
    assert table[["n_0-30", "n_30-60", "n_60-90"]].sum(axis=1).eq(len(eval_ids)).all()
    spread = pd.read_csv(outputs["per_image"])
    assert len(spread) == 2 * len(eval_ids)
    np.testing.assert_allclose(spread.groupby("variant", sort=False)["nme"].mean() * 100,
                               table.set_index("variant")["nme_all_pct"], rtol=1e-4)
    key = json.loads((e2_e3_real.run_dir(cfg, "alexnet", False) / RUN_KEY).read_text())
    assert key["init"]["path"] == str(e1_weights)  # a new E1 run makes the run folder start over

    metrics = e8_qualitative.run(cfg)
    assert metrics["photos"] == 2
    figures = e8_qualitative.outputs(cfg)
    assert figures.pop("metrics").is_file()
    assert sorted(figures) == ["figure_alexnet_land", "figure_alexnet_noland"]
    for path in figures.values():
        assert path.is_file() and path.stat().st_size > 10_000
    assert 0 < metrics["alexnet_land_overlay_coverage"] < 1

    metrics = e4_baselines.run(cfg)
    outputs = e4_baselines.outputs(cfg)
    assert all(path.is_file() for path in outputs.values()), [p for p in outputs.values() if not p.is_file()]
    table = pd.read_csv(outputs["table"], comment="#").set_index(["dataset", "method"])
    methods = [e4_baselines.MEAN_FACE, e4_baselines.GN_LAND, e4_baselines.GN_NOLAND, e4_baselines.ORACLE,
               "E1 AlexNet (synthetic, no landmarks)", "E3 AlexNet without landmarks", "E3 AlexNet with landmarks"]
    assert [m for d, m in table.index if d == "synthetic"] == methods
    assert [m for d, m in table.index if d == "real"] == methods
    syn, real = table.loc["synthetic"], table.loc["real"]
    assert np.isfinite(syn["geometric_error_mean"]).all() and syn["nme_mean"].isna().all()
    assert np.isfinite(real[["landmark_error_mean", "nme_mean"]].to_numpy()).all() and real["geometric_error_mean"].isna().all()
    # Two steps from the mean face already lower the landmark fit's landmark error (its own energy term).
    assert real.loc[e4_baselines.GN_LAND, "landmark_error_mean"] < real.loc[e4_baselines.MEAN_FACE, "landmark_error_mean"]
    assert table["ms_per_image"].drop(index=e4_baselines.MEAN_FACE, level=1).gt(0).all()
    assert table.loc[("synthetic", e4_baselines.GN_LAND), "paper_ms_per_image"] == 500
    assert metrics["speedup"] == pytest.approx(metrics["gauss_newton_ms_per_image"] / metrics["fastest_encoder_ms_per_image"])
    per_image = pd.read_csv(outputs["per_image"])
    assert len(per_image) == 2 * len(methods)  # one image of each set
    assert outputs["spread_figure"].stat().st_size > 10_000


def test_e3_run_key_names_what_the_run_depends_on():
    """A run trained on another batch mix or with its own schedule changed is not resumed; another
    encoder's schedule leaves it alone."""
    from pipelines.e2_e3_real import run_key

    def key(overrides):
        return run_key(load_config("ci", overrides), "alexnet", False, None)["config"]

    plain = key({})
    assert key({"e3.synthetic_fraction": 0.25}) != plain
    assert key({"e3.alexnet.iterations": 3}) != plain
    assert key({"e3.vgg_face.iterations": 3}) == plain


def test_run_folder_starts_over_when_what_made_it_changed(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("checkpoint.pt", "metrics.csv", "encoder.pt", "encoder.json"):
        (folder / name).write_text("old")
    prepare_run_dir(folder, {"config": "a"})  # no key yet: start over
    assert sorted(p.name for p in folder.iterdir()) == ["encoder.json", RUN_KEY]
    (folder / "checkpoint.pt").write_text("resumable")
    (folder / "metrics.csv").write_text("resumable")
    prepare_run_dir(folder, {"config": "a"})  # same key, curves there: resume
    assert (folder / "checkpoint.pt").is_file()
    (folder / "metrics.csv").unlink()
    prepare_run_dir(folder, {"config": "a"})  # curves deleted by the workflow engine: the checkpoint has them
    assert (folder / "checkpoint.pt").read_text() == "resumable"
    (folder / "metrics.csv").write_text("resumable")
    prepare_run_dir(folder, {"config": "b"})  # another config
    assert not (folder / "checkpoint.pt").exists() and not (folder / "metrics.csv").exists()


def metrics_eval_images(cfg) -> int:
    from pipelines import real_data
    return len(RealFaceSet(real_data.folder(cfg, "aflw2000"), "eval"))
