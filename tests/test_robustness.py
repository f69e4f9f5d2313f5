"""Bad inputs through the real command line (`python -m mofa.cli`, `python -m pipelines.<stage>`): each gets
one line naming the file and the problem, no traceback, and leaves no outputs; images in other formats
(grey, RGBA, 16 bit) work. Training killed with SIGKILL resumes from its last checkpoint to the same
results, and the same config run twice gives byte-identical tables. (In-process cases of `mofa
reconstruct`: tests/test_reconstruct.py.)"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mofa.config import REPO_ROOT, load_config
from mofa.decoder import CodeLayout
from mofa.encoders import build_encoder
from mofa.training.trainer import CHECKPOINT, FINAL, METRICS

ENV = {**os.environ, "OMP_NUM_THREADS": "2"}


def command(*args: str, env: dict | None = None, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=env or ENV,
                          cwd=cwd)


def mofa(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return command("-m", "mofa.cli", *args, **kwargs)


def assert_one_line_error(result: subprocess.CompletedProcess, *names) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def face_image() -> np.ndarray:
    folder = os.environ.get("MOFA_IBUG68_DIR")
    if not folder:
        pytest.fail("MOFA_IBUG68_DIR is not set: point it at the 300-W style photos (here ../shared/real-faces/ibug68)")
    return cv2.imread(str(Path(folder) / "lfpw_image_0001.png"))  # one face after the relative-size filter


# -- photos --------------------------------------------------------------------------------------------

def test_photos_bad_ones_get_one_line_each_other_formats_work(checkpoint, tmp_path):
    img = face_image()
    photos = tmp_path / "photos"
    photos.mkdir()
    good = {"grey": cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), "rgba": cv2.cvtColor(img, cv2.COLOR_BGR2BGRA),
            "deep": img.astype(np.uint16) * 257, "pair": np.concatenate([img, img], axis=1)}
    for name, pixels in good.items():
        assert cv2.imwrite(str(photos / f"{name}.png"), pixels)
    assert cv2.imread(str(photos / "deep.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    encoded = cv2.imencode(".jpg", img)[1].tobytes()
    bad = {"corrupt.png": (b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, "not a readable image"),
           "truncated.jpg": (encoded[: len(encoded) // 3], "not a readable image"),
           "empty.png": (b"", "not a readable image"),
           "noface.png": (cv2.imencode(".png", np.full((200, 200, 3), 128, np.uint8))[1].tobytes(), "no face found")}
    for name, (data, _) in bad.items():
        (photos / name).write_bytes(data)
    out = tmp_path / "out"
    paths = [str(photos / f"{n}.png") for n in good] + [str(photos / n) for n in bad] + [str(photos / "absent.png")]
    result = mofa("reconstruct", *paths, "--out", str(out), "--checkpoint", str(checkpoint))

    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("mofa reconstruct: ")]
    assert len(errors) == len(bad) + 1, result.stderr
    for name, (_, problem) in [*bad.items(), ("absent.png", (b"", "no such file"))]:
        mine = [line for line in errors if str(photos / name) in line]
        assert len(mine) == 1 and problem in mine[0], (name, errors)
    written = {p.name for p in out.iterdir()}
    for name in ("grey", "rgba", "deep"):
        assert {f"{name}_face0.ply", f"{name}_face0.obj", f"{name}_face0_overlay.png", f"{name}_face0.json"} <= written
    assert {"pair_face0.json", "pair_face1.json"} <= written  # two faces: each reconstructed
    assert not [n for n in written if n.split("_face")[0] in {Path(b).stem for b in bad} | {"absent"}]
    assert not [n for n in written if n.startswith(".")]  # no staging leftovers
    assert result.stdout.strip().endswith(f"{len(bad) + 1} photos failed")


# -- checkpoints and face models ---------------------------------------------------------------------

def test_checkpoint_with_a_corrupt_card(checkpoint, tmp_path):
    shutil.copy(checkpoint, tmp_path / "encoder.pt")
    (tmp_path / "encoder.json").write_text("{not json")
    out = tmp_path / "out"
    line = assert_one_line_error(mofa("reconstruct", "x.png", "--out", str(out), "--checkpoint", str(tmp_path / "encoder.pt")),
                                 tmp_path / "encoder.json")
    assert "not a readable encoder card" in line
    assert not any(out.iterdir())


def test_checkpoint_trained_for_another_code_size(checkpoint, tmp_path):
    """encoder.json matches the face model, but the weights were trained for 80 shape modes, not 40."""
    card = json.loads(checkpoint.with_name("encoder.json").read_text())
    other = build_encoder("alexnet", CodeLayout(80, card["code_layout"]["expression"], card["code_layout"]["reflectance"]))
    torch.save(other.state_dict(), tmp_path / "encoder.pt")
    shutil.copy(checkpoint.with_name("encoder.json"), tmp_path / "encoder.json")
    out = tmp_path / "out"
    line = assert_one_line_error(mofa("reconstruct", "x.png", "--out", str(out), "--checkpoint", str(tmp_path / "encoder.pt")),
                                 tmp_path / "encoder.pt")
    assert "not weights of a 'alexnet' encoder" in line and "size mismatch" in line
    assert not any(out.iterdir())


def test_wrong_face_model_files(ict_dir, tmp_path):
    """An ICT-FaceKit folder whose neutral mesh is not an OBJ, and a Basel Face Model path that is not HDF5."""
    fake = tmp_path / "ict" / "FaceXModel"
    fake.mkdir(parents=True)
    for path in (Path(ict_dir) / "FaceXModel").iterdir():
        (fake / path.name).symlink_to(path)
    (fake / "generic_neutral_mesh.obj").unlink()
    (fake / "generic_neutral_mesh.obj").write_text("v 1 2\nv garbage\nf 1 2 3\n")
    config = tmp_path / "fresh.yaml"
    config.write_text(f"preset: ci\nface_model:\n  cache_dir: {tmp_path / 'cache'}\n")
    line = assert_one_line_error(mofa("model-info", "ict", "--config", str(config), env={**ENV, "MOFA_ICT_DIR": str(tmp_path / "ict")}),
                                 fake / "generic_neutral_mesh.obj")
    assert "not an OBJ mesh" in line
    bad = tmp_path / "model.h5"
    bad.write_text("not HDF5")
    config.write_text(f"preset: ci\nface_model:\n  name: bfm2017\n  path: {bad}\n  landmarks_path: {bad}\n"
                      f"  cache_dir: {tmp_path / 'cache'}\n")
    assert "not a readable HDF5 file" in assert_one_line_error(mofa("model-info", "bfm2017", "--config", str(config)), bad)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_unknown_config_key(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("preset: ci\ntraining:\n  batch_sise: 4\n")
    line = assert_one_line_error(mofa("model-info", "ict", "--config", str(config)), config)
    assert "unknown key 'training.batch_sise'" in line


def test_missing_ict_facekit(tmp_path):
    """MOFA_ICT_DIR pointing nowhere; and unset, with no cached copy and no network (a proxy that refuses)."""
    config = tmp_path / "fresh.yaml"
    config.write_text(f"preset: ci\nface_model:\n  cache_dir: {tmp_path / 'cache'}\n")
    nowhere = tmp_path / "nowhere"
    line = assert_one_line_error(mofa("model-info", "ict", "--config", str(config), env={**ENV, "MOFA_ICT_DIR": str(nowhere)}),
                                 f"MOFA_ICT_DIR={nowhere}")
    assert "no such folder" in line
    offline = {k: v for k, v in ENV.items() if k != "MOFA_ICT_DIR"} | {
        "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}
    line = assert_one_line_error(mofa("model-info", "ict", "--config", str(config), env=offline), "MOFA_ICT_DIR")
    assert "ICT-FaceKit not found: set MOFA_ICT_DIR" in line
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # no partial download left


def test_unwritable_output_folder(checkpoint, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = assert_one_line_error(mofa("reconstruct", "x.png", "--out", str(blocker / "out"), "--checkpoint", str(checkpoint)),
                                 blocker / "out")
    assert "cannot write there" in line
    result = command("-m", "pipelines.face_model", "--config", "ci", "--set", f"results_dir={blocker / 'results'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"{blocker / 'results'}/ci: cannot write there" in errors[0]
    assert blocker.read_text() == "not a folder"


# -- training killed mid-run; the same config twice ----------------------------------------------------

TINY = {"synthetic.n_train": 8, "synthetic.n_test": 2, "training.batch_size": 2, "training.eval_images": 2,
        "training.checkpoint_every": 2, "e1.iterations": 6, "e1.evaluations": 2}


def e1_config(results: Path, cache: Path) -> dict:
    return load_config("ci", {**TINY, "results_dir": str(results), "face_model.cache_dir": str(cache)})


def e1_command(cfg: dict) -> list[str]:
    sets = [f"{key}={json.dumps(value)}" for key, value in
            {**TINY, "results_dir": cfg["results_dir"], "face_model.cache_dir": cfg["face_model"]["cache_dir"]}.items()]
    return [sys.executable, "-m", "pipelines.e1_synthetic", "--config", "ci", *[a for s in sets for a in ("--set", s)]]


def run_e1(results: Path, cache: Path) -> dict:
    """The synthetic data (in this process) and then E1 (a subprocess) into `results`; returns the config."""
    from pipelines import synthetic
    cfg = e1_config(results, cache)
    synthetic.run(cfg)
    result = subprocess.run(e1_command(cfg), capture_output=True, text=True, timeout=300, env=ENV, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    return cfg


def e1_files(cfg: dict) -> dict[str, bytes]:
    from pipelines import e1_synthetic
    out = e1_synthetic.outputs(cfg)
    return {key: out[key].read_bytes() for key in ("table", "table_md", "figure", "per_image", "spread_figure")}


@pytest.fixture(scope="module")
def e1_once(cache, tmp_path_factory) -> dict:
    return run_e1(tmp_path_factory.mktemp("first") / "results", cache)


def test_the_same_config_twice_gives_identical_tables(e1_once, cache, tmp_path):
    from pipelines.tables import data_hashes
    again = run_e1(tmp_path / "results", cache)
    assert e1_files(again) == e1_files(e1_once)  # tables (CSV, Markdown, per image) and figures, byte for byte
    assert data_hashes(again, "e1_synthetic") == data_hashes(e1_once, "e1_synthetic")


def test_training_killed_with_sigkill_resumes_to_the_same_results(e1_once, cache, tmp_path):
    from pipelines import e1_synthetic, synthetic
    cfg = e1_config(tmp_path / "results", cache)
    synthetic.run(cfg)
    run = e1_synthetic.run_dir(cfg, cfg["e1"]["encoders"][0])
    process = subprocess.Popen(e1_command(cfg), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
                               cwd=REPO_ROOT)
    deadline = time.monotonic() + 240
    while not (run / CHECKPOINT).is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = torch.load(run / CHECKPOINT, weights_only=True)["iteration"]
    assert 0 < killed_at < TINY["e1.iterations"] and not (run / FINAL).exists()

    result = subprocess.run(e1_command(cfg), capture_output=True, text=True, timeout=300, env=ENV, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert f"resumed {run} at iteration {killed_at}" in result.stderr, result.stderr[-3000:]  # not started over
    assert e1_files(cfg) == e1_files(e1_once)
    name = cfg["e1"]["encoders"][0]
    first, resumed = (torch.load(e1_synthetic.run_dir(c, name) / FINAL, weights_only=True) for c in (e1_once, cfg))
    assert all(torch.equal(first[k], resumed[k]) for k in first)
    curves = [np.genfromtxt(e1_synthetic.run_dir(c, name) / METRICS, delimiter=",", names=True) for c in (e1_once, cfg)]
    assert [n for n in curves[0].dtype.names if n != "seconds"] == [n for n in curves[1].dtype.names if n != "seconds"]
    for name in curves[0].dtype.names:
        if name != "seconds":
            assert np.array_equal(curves[0][name], curves[1][name], equal_nan=True), name
