"""Reconstruct faces from photos with a trained encoder: detect, crop, encode, decode, write.

Faces are found with MediaPipe's BlazeFace (mofa.realdata.detect.detect_faces_mediapipe), one box
per face. Per face: <stem>_face<k>.ply and .obj (posed mesh in camera-space mm with shaded vertex
colours, written with Open3D and read back to check it is whole), <stem>_face<k>_overlay.png (crop |
reconstruction over it | shaded geometry) and <stem>_face<k>.json (the code by part, the face box, the
crop transform, the checkpoint). A photo's files are written under their own names into a private
folder beside the outputs, then renamed into place: a failure leaves none of that photo's files.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from mofa import io
from mofa.errors import MofaError, one_line
from mofa.realdata.crop_policy import CropPolicy
from mofa.realdata.images import IMAGE_SUFFIXES

log = logging.getLogger(__name__)
# E3's table, whose best variant on the AFLW2000 eval split `mofa reconstruct` uses by default.
E3_TABLE = Path("tables") / "e3_variants.csv"
FACE_FILE_SUFFIXES = (".ply", ".obj", "_overlay.png", ".json")  # a face's files: <stem>_face<k><suffix>
OVERLAY = re.compile(r".+_face\d+_overlay\.png")


@dataclass
class Reconstructor:
    """A trained encoder with its decoder (training region) and the mesh to export (render region)."""
    encoder: torch.nn.Module
    decoder: torch.nn.Module
    mesh_decoder: torch.nn.Module
    input_size: int
    checkpoint: Path
    policy: CropPolicy  # the crop of the encoder's preset, as its training data was prepared

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path) -> "Reconstructor":
        """Load encoder weights and the encoder.json card written beside them by the trainer."""
        from mofa.decoder import Decoder
        from mofa.encoders import build_encoder
        from mofa.encoders import card as card_module
        from mofa.facemodel import build_face_model
        from mofa.settings import load_settings
        state, _ = card_module.read_weights(checkpoint)  # as given: a folder without encoder.pt is named so
        checkpoint = card_module.weights_path(checkpoint)
        card_path = card_module.card_path(checkpoint)
        card = card_module.read_card(card_path, required=True)
        with card_module.problems_named_by(card_path):
            settings = load_settings(card["preset"], overrides={"face_model": card["face_model"], "camera": card["camera"],
                                                                "light": card["light"]})
        model = build_face_model(settings.face_model)
        camera, ambient = settings.camera, settings.light.ambient_offset
        decoder = Decoder(model.submesh(model.face_region), camera, ambient)
        if decoder.layout.sizes != card["code_layout"]:
            raise MofaError(f"{card_path}: code layout {card['code_layout']} does not match the face model's "
                            f"{decoder.layout.sizes}")
        mesh_decoder = Decoder(model.drawn(), camera, ambient)
        with card_module.problems_named_by(card_path):
            encoder = build_encoder(card["encoder"], decoder.layout,
                                    rotation_bound_rad=card_module.rotation_bound_rad(card["rotation_bound_deg"]),
                                    module=card.get("module"), options=card.get("options"))
        card_module.check_input_size(encoder, card["encoder"], card["input_size"], card_path)  # not every photo failing
        card_module.load_weights(encoder, state, checkpoint, card["encoder"])
        return cls(encoder.eval(), decoder, mesh_decoder, int(card["input_size"]), checkpoint,
                   CropPolicy.from_settings(settings))


def project_results() -> Path:
    """The default preset's results folder of this checkout (results_dir from the repository root when
    relative, as `make reproduce` runs there), wherever the command is run from."""
    from mofa.config import REPO_ROOT, load_config, results_dir
    folder = results_dir(load_config("default")).expanduser()
    return folder if folder.is_absolute() else REPO_ROOT / folder


def default_checkpoint(results_root: str | Path | None = None) -> Path:
    """The encoder `make reproduce` trained that did best on the AFLW2000 eval split: the E3 variant
    with the lowest mean 68-point NME over the yaw bins (tables/e3_variants.csv); results_root: the
    results folder of the default preset (None: project_results())."""

    results_root = project_results() if results_root is None else Path(results_root)
    table_path = results_root / E3_TABLE
    if not table_path.is_file():
        raise MofaError(f"{table_path}: not found, so there is no trained encoder to choose: run `make reproduce` "
                        "first, or pass --checkpoint")
    try:
        from mofa.results import read_table
        table = read_table(table_path).frame
        best = table.sort_values("nme_mean_pct", kind="stable").iloc[0]
    except Exception as exc:  # noqa: BLE001 - any unreadable table is the same user problem
        raise MofaError(f"{table_path}: unreadable E3 table ({one_line(exc)}); pass --checkpoint") from None
    run = f"e3_{best['encoder']}_{'land' if best['landmark_loss'] == 'yes' else 'noland'}"
    path = results_root / "runs" / run / "encoder.pt"
    if not path.is_file():
        raise MofaError(f"{path}: the best E3 variant's weights ({best['variant']}, {best['nme_mean_pct']:.1f} % NME) "
                        "are missing: rerun `make reproduce`, or pass --checkpoint")
    log.info("using %s: the best encoder on the AFLW2000 eval split (%s, %.1f %% NME)", path, best["variant"],
             best["nme_mean_pct"])
    return path


def read_photo(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any image OpenCV reads (grey, RGBA and 16-bit converted; truncated
    files refused), as real-data preparation reads them."""
    from mofa.realdata.images import FrameReader, UnreadableImage
    try:
        return FrameReader().read(path)
    except UnreadableImage as exc:
        raise MofaError(f"{path}: {exc}") from None


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` and flush it to the disk, so that a full disk fails here (OSError)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", rgb[..., ::-1])
    if not ok:
        raise MofaError(f"{path}: OpenCV could not encode the PNG")
    write_bytes(path, data.tobytes())


def _write_mesh(path: Path, vertices: np.ndarray, triangles: np.ndarray, colours: np.ndarray) -> None:
    """Write a mesh with Open3D and read it back: Open3D reports success on a full disk with the file
    cut short, so a file that does not read back whole is a MofaError."""
    import open3d as o3d
    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(vertices.astype(np.float64)),
                                     o3d.utility.Vector3iVector(triangles.astype(np.int32)))
    mesh.vertex_colors = o3d.utility.Vector3dVector(np.clip(colours, 0, 1).astype(np.float64))
    mesh.compute_vertex_normals()
    ok = o3d.io.write_triangle_mesh(str(path), mesh, write_vertex_colors=True)
    if ok and path.is_file():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
        back = o3d.io.read_triangle_mesh(str(path))
        ok = len(back.vertices) == len(vertices) and len(back.triangles) == len(triangles) and back.has_vertex_colors()
    if not ok:
        raise MofaError(f"{path}: Open3D could not write the mesh whole (is the disk full?)")


def _write(path: Path, writer: Callable[[Path], None]) -> None:
    """writer(path), any OSError as a MofaError naming the file."""
    try:
        writer(path)
    except OSError as exc:
        raise MofaError(f"{path}: cannot write ({io.reason(path, exc)})") from None


def photo_files(photos: list[str | Path]) -> list[Path]:
    """The photos to reconstruct, in order: each file as given, each folder's image files (sorted, not
    recursive; IMAGE_SUFFIXES; not the overlays an earlier run wrote there), each file once. A folder
    without images, or a missing path, stays in the list for `reconstruct_photo` to report."""
    files: list[Path] = []
    for photo in map(Path, photos):
        found = sorted(p for p in photo.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                       and not OVERLAY.fullmatch(p.name)) if photo.is_dir() else []
        files += found or [photo]
    unique: dict[Path, Path] = {}
    for photo in files:
        unique.setdefault(photo.resolve(), photo)
    return list(unique.values())


def output_stems(photos: list[Path]) -> list[str]:
    """A distinct file-name stem per photo: its own stem where no other photo has it, else its path
    from the clashing photos' common folder joined with '_' (a/x.jpg, b/x.jpg -> a_x, b_x), and the
    file suffix too where that still clashes (x.jpg, x.png -> x_jpg, x_png)."""
    stems = [p.stem for p in photos]
    resolved = [p.resolve() for p in photos]
    for stem in {s for s in stems if stems.count(s) > 1}:
        clash = [k for k, s in enumerate(stems) if s == stem]
        common = Path(os.path.commonpath([resolved[k].parent for k in clash]))
        for k in clash:
            stems[k] = "_".join(resolved[k].parent.relative_to(common).parts + (stem,))
    return [f"{s}_{p.suffix.lstrip('.')}" if stems.count(s) > 1 else s for p, s in zip(photos, stems)]


def reconstruct_photo(rec: Reconstructor, photo: str | Path, out_dir: str | Path,
                      stem: str | None = None) -> list[Path]:
    """Reconstruct every face found in one photo into <stem>_face<k>.* (stem: the photo's own by
    default); returns the files written. Files of faces a previous run of the same stem found and
    this one did not are removed. MofaError when the photo is unreadable or holds no face."""
    from mofa.realdata.detect import detect_faces_mediapipe
    from mofa.render.raycast import render, shaded_geometry_colours
    from mofa.training.trainer import predict_codes

    photo, out_dir = Path(photo), Path(out_dir)
    stem = stem or photo.stem
    if photo.is_dir():
        raise MofaError(f"{photo}: a folder with no image files ({', '.join(IMAGE_SUFFIXES)})")
    longest, name_max = f"{stem}_face00_overlay.png", os.pathconf(out_dir, "PC_NAME_MAX")
    if len(os.fsencode(longest)) > name_max:  # before the work, not when writing its result
        raise MofaError(f"{photo}: name too long for its output files ({len(os.fsencode(longest))} bytes in "
                        f"{longest[:20]}..., {name_max} allowed in {out_dir}); rename the photo")
    rgb = read_photo(photo)
    boxes, _ = detect_faces_mediapipe(rgb)
    boxes = boxes[np.argsort(-boxes[:, 2] * boxes[:, 3], kind="stable")]  # face0 the largest
    if len(boxes) == 0:
        raise MofaError(f"{photo}: no face found (MediaPipe BlazeFace); try a larger, well-lit face")
    small = [rec.policy.too_small(box) for box in boxes]
    if all(small):
        raise MofaError(f"{photo}: every face found is too small to reconstruct ({small[0]}, real_data.min_face_px)")
    for k in np.flatnonzero(small):
        log.warning("%s: skipping a face too small to reconstruct (%s)", photo, small[k])
    boxes = boxes[[not reason for reason in small]]
    if len(boxes) > 1:
        log.warning("%s: %d faces found; reconstructing each (face0 is the largest)", photo, len(boxes))
    windows = [rec.policy.window(box) for box in boxes]
    crops = np.stack([w.crop(rgb) for w in windows])
    images = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    codes = predict_codes(rec.encoder, images, rec.input_size)
    with torch.no_grad():
        mesh = rec.mesh_decoder(codes)
    # each file under its final name (the .obj names its object after the file) in a private folder
    # beside the outputs (the same filesystem), then renamed into place: a failure leaves nothing
    written = []
    for stale in out_dir.glob(f".{glob.escape(stem)}.*"):  # a killed run's (SIGKILL: no cleanup ran)
        if stale.is_dir() and re.fullmatch(re.escape(f".{stem}.") + r"[a-z0-9_]{8}", stale.name):
            shutil.rmtree(stale, ignore_errors=True)
    try:
        staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{stem}."))
    except OSError as exc:
        raise MofaError(f"{out_dir}: cannot write there ({io.reason(out_dir, exc)})") from None
    try:
        for k, (window, box) in enumerate(zip(windows, boxes)):
            face = f"{stem}_face{k}"
            verts, cols = mesh.vertices[k].numpy(), mesh.colours[k].clamp(0, 1).numpy()
            tris = rec.mesh_decoder.triangles.numpy()
            for suffix in (".ply", ".obj"):
                _write(staging / f"{face}{suffix}", lambda path: _write_mesh(path, verts, tris, cols))
            crop = crops[k].astype(np.float32) / 255.0
            overlay = render(verts, tris, cols, rec.decoder.camera, crop, cull_back_faces=True).image
            grey = render(verts, tris, shaded_geometry_colours(mesh.normals[k].numpy()), rec.decoder.camera,
                          np.ones_like(crop), cull_back_faces=True).image
            panel = (np.clip(np.concatenate([crop, overlay, grey], 1), 0, 1) * 255).round().astype(np.uint8)
            _write(staging / f"{face}_overlay.png", lambda path: _write_png(path, panel))
            parts = rec.decoder.layout.split(codes[k:k + 1])
            params = {"photo": str(photo), "face_index": k, "face_box_xywh": [float(v) for v in box],
                      "crop_from_image": window.transform.tolist(), "checkpoint": str(rec.checkpoint),
                      "units": {"rotation": "radians (pitch, yaw, roll)",
                                "translation": f"{rec.decoder.camera.translation_scale_mm} mm per unit"},
                      "code": {name: part[0].tolist() for name, part in parts._asdict().items()}}
            text = json.dumps(params, indent=2).encode()
            _write(staging / f"{face}.json", lambda path: write_bytes(path, text))
        try:
            for path in sorted(staging.iterdir()):
                target = out_dir / path.name
                os.replace(path, target)
                written.append(target)
        except BaseException:  # Ctrl-C between two renames: none of this photo's files, not some
            for target in written:
                target.unlink(missing_ok=True)
            raise
        for k in range(len(boxes), 1 << 30):  # faces of an earlier run beyond this one's
            stale = [out_dir / f"{stem}_face{k}{suffix}" for suffix in FACE_FILE_SUFFIXES]
            if not any(p.exists() for p in stale):
                break
            for p in stale:
                p.unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def reconstruct(photos: list[str | Path], out_dir: str | Path, checkpoint: str | Path | None = None) -> tuple[int, int]:
    """Reconstruct several photos; problems with one photo are reported and the others go on.
    Returns (faces written, photos that failed)."""
    from mofa.config import writable_folder
    out_dir = writable_folder(out_dir)
    rec = Reconstructor.from_checkpoint(checkpoint or default_checkpoint())
    faces = failed = 0
    photos = photo_files(photos)
    for photo, stem in zip(photos, output_stems(photos)):
        try:
            files = reconstruct_photo(rec, photo, out_dir, stem)
        except MofaError as exc:
            print(f"mofa reconstruct: {exc}", file=sys.stderr, flush=True)
            failed += 1
            continue
        n = sum(1 for f in files if f.suffix == ".json")
        faces += n
        print(f"{photo}: {n} face{'s' if n != 1 else ''} -> {out_dir}", flush=True)
    return faces, failed
