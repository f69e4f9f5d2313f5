"""`mofa reconstruct`: meshes, overlays and codes per face; clear one-line messages otherwise."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d
import pytest
import torch

from mofa.cli import main
from mofa.facemodel import build_face_model
from mofa.settings import load_settings
from mofa.training.runs import make_encoder, training_decoder, write_encoder_card


@pytest.fixture(scope="module")
def checkpoint(ict_dir, tmp_path_factory):
    """Weights of a freshly built encoder (zero head: the mean face) with its encoder.json."""
    root = tmp_path_factory.mktemp("run")
    settings = load_settings("ci", {"face_model.cache_dir": str(root / "cache")})
    model = build_face_model(settings.face_model)
    decoder = training_decoder(settings, model)
    encoder = make_encoder(settings, "alexnet", decoder)
    torch.save(encoder.state_dict(), root / "encoder.pt")
    write_encoder_card(root, settings, "alexnet", decoder, encoder)
    return root / "encoder.pt"


@pytest.fixture(scope="module")
def face_photo():
    folder = os.environ.get("MOFA_IBUG68_DIR")
    if not folder:
        pytest.fail("MOFA_IBUG68_DIR is not set: point it at the 300-W style photos (here ../shared/real-faces/ibug68)")
    return Path(folder) / "lfpw_image_0001.png"  # one face after the relative-size filter


def test_reconstruct_writes_mesh_overlay_and_code(checkpoint, face_photo, tmp_path, capsys):
    assert main(["reconstruct", str(face_photo), "--out", str(tmp_path), "--checkpoint", str(checkpoint)]) == 0
    stem = f"{face_photo.stem}_face0"
    names = {p.name for p in tmp_path.iterdir()}
    assert {f"{stem}.ply", f"{stem}.obj", f"{stem}_overlay.png", f"{stem}.json"} <= names
    assert not [n for n in names if n.startswith(".")], "no staging leftovers"
    mesh = o3d.io.read_triangle_mesh(str(tmp_path / f"{stem}.ply"))
    assert len(mesh.vertices) > 10000 and mesh.has_vertex_colors() and len(mesh.triangles) > 10000
    params = json.loads((tmp_path / f"{stem}.json").read_text())
    assert len(params["code"]["light"]) == 27 and len(params["code"]["shape"]) == 40
    assert np.array(params["crop_from_image"]).shape == (2, 3)
    overlay = cv2.imread(str(tmp_path / f"{stem}_overlay.png"))
    assert overlay.shape == (240, 720, 3)
    assert "1 face reconstructed, 0 photos failed" in capsys.readouterr().out


def test_two_faces_are_each_reconstructed(checkpoint, face_photo, tmp_path):
    img = cv2.imread(str(face_photo))
    pair = tmp_path / "pair.png"
    cv2.imwrite(str(pair), np.concatenate([img, img], axis=1))
    out = tmp_path / "out"
    assert main(["reconstruct", str(pair), "--out", str(out), "--checkpoint", str(checkpoint)]) == 0
    jsons = sorted(p.name for p in out.glob("*.json"))
    assert len(jsons) >= 2 and jsons[:2] == ["pair_face0.json", "pair_face1.json"]


@pytest.mark.parametrize("content, message", [
    ("no_face", "no face found"),
    ("corrupt", "not a readable image"),
    ("truncated", "not a readable image"),
])
def test_bad_photos_get_one_line_and_no_outputs(checkpoint, face_photo, tmp_path, capsys, content, message):
    photo = tmp_path / f"{content}.png"
    if content == "no_face":
        cv2.imwrite(str(photo), np.full((200, 200, 3), 128, np.uint8))
    elif content == "corrupt":
        photo.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    else:
        data = cv2.imencode(".png", cv2.imread(str(face_photo)))[1].tobytes()
        photo.write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    assert main(["reconstruct", str(photo), "--out", str(out), "--checkpoint", str(checkpoint)]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if message in line]
    assert len(lines) == 1 and str(photo) in lines[0]
    assert list(out.iterdir()) == []



def test_a_face_under_the_preparations_smallest_is_skipped_with_its_size(checkpoint, face_photo, tmp_path, capsys):
    """The crop policy is the preparation's (real_data.min_face_px, margin): a photo whose only face
    is smaller than a training face may be is refused with the box size, not cropped to blur."""
    from mofa.realdata.crop_policy import CropPolicy
    from mofa.realdata.detect import detect_faces_mediapipe
    from mofa.reconstruct import Reconstructor

    policy = Reconstructor.from_checkpoint(checkpoint).policy
    assert policy == CropPolicy.from_settings(load_settings("ci"))
    rgb = cv2.cvtColor(cv2.imread(str(face_photo)), cv2.COLOR_BGR2RGB)
    side = detect_faces_mediapipe(rgb)[0][0, 2]
    scale = 0.75 * policy.min_face_px / side  # the face at about 48 px: found, but under 64
    small = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    boxes, _ = detect_faces_mediapipe(small)
    assert len(boxes) and all(policy.too_small(box) for box in boxes), boxes  # the setup holds
    photo = tmp_path / "small.png"
    cv2.imwrite(str(photo), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    assert main(["reconstruct", str(photo), "--out", str(out), "--checkpoint", str(checkpoint)]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if "too small to reconstruct" in line]
    assert len(lines) == 1 and str(photo) in lines[0] and f"< {policy.min_face_px} px" in lines[0]
    assert not out.exists() or list(out.iterdir()) == []

def test_unwritable_output_and_missing_checkpoint(checkpoint, face_photo, tmp_path, capsys):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert main(["reconstruct", str(face_photo), "--out", str(blocked / "sub"), "--checkpoint", str(checkpoint)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write there" in err[0]
    assert main(["reconstruct", str(face_photo), "--out", str(tmp_path / "o"), "--checkpoint", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint not found" in err[0]


def test_default_checkpoint_is_the_best_e3_variant_on_the_eval_split(tmp_path):
    import pandas as pd

    from mofa.errors import MofaError
    from mofa.reconstruct import E3_TABLE, default_checkpoint
    from pipelines.tables import write_csv

    with pytest.raises(MofaError, match="e3_variants.csv: not found"):
        default_checkpoint(tmp_path)
    rows = [("AlexNet with landmarks", "alexnet", "yes", 18.7), ("dlib ResNet with landmarks", "dlib_resnet", "yes", 9.5),
            ("dlib ResNet without landmarks", "dlib_resnet", "no", 30.1)]
    table = pd.DataFrame(rows, columns=["variant", "encoder", "landmark_loss", "nme_mean_pct"])
    (tmp_path / "tables").mkdir()
    (tmp_path / E3_TABLE).write_text("# E3; provenance\n" + table.to_csv(index=False))
    with pytest.raises(MofaError, match="e3_dlib_resnet_land/encoder.pt: the best E3 variant's weights"):
        default_checkpoint(tmp_path)
    for run in ("e3_alexnet_land", "e3_dlib_resnet_land", "e3_dlib_resnet_noland"):
        (tmp_path / "runs" / run).mkdir(parents=True)
        (tmp_path / "runs" / run / "encoder.pt").write_bytes(b"")
    assert default_checkpoint(tmp_path) == tmp_path / "runs" / "e3_dlib_resnet_land" / "encoder.pt"
    write_csv(table.assign(nme_mean_pct=[5.0, 9.5, 30.1]), tmp_path / E3_TABLE)  # also without a title line
    assert default_checkpoint(tmp_path) == tmp_path / "runs" / "e3_alexnet_land" / "encoder.pt"
