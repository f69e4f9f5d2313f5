"""Where users meet the tool (issue 22): `mofa reconstruct` and `mofa evaluate` on bad cards, malformed
annotations, blocked or read-only paths and a full disk. Each case gets one line naming the file and
the problem, never a traceback, and leaves no partial file; a bad item in a batch is skipped and the
rest go on. A full disk is a small tmpfs where this process can mount one (root), else an injected
ENOSPC. Also: the face detector of `mofa reconstruct` on the ibug68 photos, the paths that do not
depend on the working directory, and byte-identical outputs."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mofa.cli import main
from mofa.config import REPO_ROOT
from mofa.errors import MofaError

ENV = {**os.environ, "OMP_NUM_THREADS": "2"}


def mofa(*args: str, env: dict | None = None, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mofa.cli", *args], capture_output=True, text=True, timeout=300,
                          env=env or ENV, cwd=cwd)


def run(capsys, *args: str) -> subprocess.CompletedProcess:
    """`mofa ARGS` in this process (the console script's main): its exit code, stdout and stderr."""
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["mofa", *args], code, captured.out, captured.err)


def error_lines(stderr: str) -> list[str]:
    """stderr without the start-up chatter of MediaPipe's C++ side (absl / TF Lite lines)."""
    noise = ("WARNING: All log messages before absl", "INFO: Created TensorFlow", "W0000 ", "I0000 ", "E0000 ",
             "UserWarning: SymbolDatabase", "warnings.warn(")
    return [line for line in stderr.strip().splitlines() if line.strip() and not line.lstrip().startswith(noise)
            and "GetPrototype" not in line]


def assert_one_line_error(result: subprocess.CompletedProcess, *names) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Hidden staging folders or temporary files anywhere under `folder`."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.startswith(".") or p.suffix in (".tmp", ".partial") or ".partial" in p.name)


@contextlib.contextmanager
def tmpfs(where: Path, size: str, read_only: bool = False):
    """A tmpfs of `size` mounted at `where` (made), yielded as True; False where this process cannot
    mount one (not root, no CAP_SYS_ADMIN), so that the test injects the failure instead."""
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = shutil.which("mount") is not None and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def ibug_folder() -> Path:
    folder = os.environ.get("MOFA_IBUG68_DIR")
    if not folder:
        pytest.fail("MOFA_IBUG68_DIR is not set: point it at the 300-W style photos (here ../shared/real-faces/ibug68)")
    return Path(folder)


@pytest.fixture
def photos(tmp_path) -> list[Path]:
    """Two one-face photos of ibug68, copied."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("lfpw_image_0001.png", "lfpw_image_0002.png"):
        shutil.copy(ibug_folder() / name, folder / name)
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def aflw_folder(aflw_dir, tmp_path_factory) -> Path:
    """Three AFLW2000-3D images (symlinked) in a folder of their own."""
    folder = tmp_path_factory.mktemp("aflw")
    for image in sorted(Path(aflw_dir).glob("image*.jpg"))[:3]:
        for suffix in (".jpg", ".mat"):
            (folder / image.with_suffix(suffix).name).symlink_to(image.with_suffix(suffix))
    return folder


# -- the face detector ---------------------------------------------------------------------------------

def test_suppress_duplicates_keeps_one_box_per_face():
    from mofa.realdata.detect import suppress_duplicates
    boxes = np.array([[0, 0, 100, 100], [10, 10, 100, 100], [20, 20, 30, 30], [300, 0, 80, 80], [0, 0, 100, 100.0]])
    scores = np.array([0.9, 0.8, 0.95, 0.7, 0.5])
    kept, kept_scores = suppress_duplicates(boxes, scores)
    # the nested 30 px box has the best score, so it stays and the boxes it lies in go; the far one stays
    np.testing.assert_array_equal(kept, boxes[[2, 3]])
    np.testing.assert_array_equal(kept_scores, [0.95, 0.7])
    kept, _ = suppress_duplicates(boxes[[0, 1, 3]])  # no scores: largest first; IoU 0.68 -> one of the two
    np.testing.assert_array_equal(kept, boxes[[0, 3]])


def test_detector_finds_every_annotated_ibug68_face_once():
    """The 19 ibug68 photos, Einstein included: one box on the annotated face, no second box on it,
    and no box on top of another (the duplicates suppressed)."""
    from mofa.realdata.adapters import iter_ibug68
    from mofa.realdata.detect import box_iou, detect_faces_mediapipe
    from mofa.realdata.detection_rate import matches
    from mofa.realdata.images import FrameReader

    samples = list(iter_ibug68(ibug_folder()))
    assert len(samples) == 19
    missed, doubled, overlapping = [], [], []
    with FrameReader() as reader:
        for sample in samples:
            boxes, scores = detect_faces_mediapipe(reader.read(sample.image_path))
            on_face = int(matches(boxes, sample.hint_box).sum())
            (missed if on_face == 0 else doubled if on_face > 1 else []).append(sample.id)
            overlapping += [sample.id for k in range(len(boxes)) if (box_iou(boxes[k + 1:], boxes[k]) > 0.3).any()]
    assert not missed and not doubled and not overlapping, (missed, doubled, overlapping)


def test_reconstruct_finds_einstein_and_writes_identical_files_twice(checkpoint, tmp_path):
    """Haar misses Einstein's face; the default detector finds it. Two runs give byte-identical files
    (the .obj header names its object after the final file, not a temporary one)."""
    photo = ibug_folder() / "einstein.jpg"
    for out in ("a", "b"):
        assert main(["reconstruct", str(photo), "--out", str(tmp_path / out), "--checkpoint", str(checkpoint)]) == 0
    first = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    second = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    assert "einstein_face0.obj" in first and first.keys() == second.keys()
    assert [n for n in first if first[n] != second[n]] == []
    assert b"# object name: einstein_face0\n" in first["einstein_face0.obj"]
    from mofa.realdata.adapters import iter_ibug68
    from mofa.realdata.detection_rate import matches
    einstein = next(s for s in iter_ibug68(ibug_folder()) if s.image_path.name == "einstein.jpg")
    boxes = np.array([json.loads(data)["face_box_xywh"] for name, data in sorted(first.items()) if name.endswith(".json")])
    assert matches(boxes, einstein.hint_box).tolist() == [True] + [False] * (len(boxes) - 1), boxes  # face0: the largest


# -- paths that do not depend on the working directory --------------------------------------------------

def test_cache_and_default_checkpoint_resolve_from_the_project(tmp_path, monkeypatch, capsys):
    from mofa.facemodel import CACHE_ENV_VAR, cache_path
    from mofa.reconstruct import project_results
    from mofa.settings import load_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CACHE_ENV_VAR, raising=False)
    fm = load_settings("ci").face_model
    assert cache_path(fm).parent == REPO_ROOT / "results" / "cache"
    assert project_results() == REPO_ROOT / "results" / "default"
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "elsewhere"))
    assert cache_path(fm).parent == tmp_path / "elsewhere"

    # from another folder, `mofa reconstruct` without --checkpoint looks in the project's results
    result = run(capsys, "reconstruct", "x.png", "--out", str(tmp_path / "out"))
    table = REPO_ROOT / "results" / "default" / "tables" / "e3_variants.csv"
    if table.is_file():  # `make reproduce` has run in this checkout: it must not be asked for
        assert "run `make reproduce` first" not in result.stderr, result.stderr
    else:
        assert "run `make reproduce` first" in assert_one_line_error(result, table)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "out"] or \
        sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_reconstruct_from_a_read_only_working_directory(checkpoint, cache, photos, tmp_path, monkeypatch, capsys):
    """Outputs given as an absolute path work from a read-only folder (the cache from MOFA_CACHE_DIR,
    nothing under ./results/cache); a relative --out there is one line."""
    here = tmp_path / "read-only"
    monkeypatch.setenv("MOFA_CACHE_DIR", str(cache))
    with tmpfs(here, "1m", read_only=True) as mounted:
        if not mounted:  # no mount here: an empty folder must stay empty
            here.mkdir(exist_ok=True)
        monkeypatch.chdir(here)
        result = run(capsys, "reconstruct", str(photos[0]), "--out", str(tmp_path / "out"), "--checkpoint", str(checkpoint))
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "out" / f"{photos[0].stem}_face0.json").is_file()
        assert list(here.iterdir()) == []
        if mounted:
            line = assert_one_line_error(run(capsys, "reconstruct", str(photos[0]), "--out", "recon", "--checkpoint",
                                             str(checkpoint)), "recon")
            assert "cannot write there (Read-only file system)" in line
        monkeypatch.chdir(tmp_path)


# -- a full disk ----------------------------------------------------------------------------------------

def test_full_disk_fails_the_photo_with_one_line_and_the_batch_goes_on(checkpoint, photos, tmp_path, capsys):
    """--out on a tmpfs that holds the first photo's files and not the second's: the first is written
    whole, the second fails with one line (Open3D's writer says nothing about a full disk: the mesh
    is read back), nothing partial is left, and the third photo is still tried."""
    reference = tmp_path / "reference"
    assert main(["reconstruct", str(photos[0]), "--out", str(reference), "--checkpoint", str(checkpoint)]) == 0
    one_photo = sum(p.stat().st_size for p in reference.iterdir())
    pages = (one_photo + one_photo // 2) // 4096 + 8
    small = tmp_path / "small"
    third = shutil.copy(photos[1], tmp_path / "third.png")  # another file (the same file twice is read once)
    batch = [str(photos[0]), str(photos[1]), str(third)]
    with tmpfs(small, f"{pages * 4096}") as mounted:
        if not mounted:
            pytest.fail("this test needs a tmpfs (run as root); test_full_disk_injected covers the rest")
        result = run(capsys, "reconstruct", *batch, "--out", str(small), "--checkpoint", str(checkpoint))
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        errors = [line for line in error_lines(result.stderr) if line.startswith("mofa reconstruct: ")]
        assert len(errors) == 2 and all(str(small) in line for line in errors), result.stderr
        assert all("No space left on device" in line or "could not write the mesh whole" in line for line in errors)
        assert result.stdout.strip().endswith("2 photos failed"), result.stdout
        assert leftovers(small) == []
        written = {p.name: p.read_bytes() for p in small.iterdir()}
        assert written == {p.name: p.read_bytes() for p in reference.iterdir()}  # the first photo, whole


def test_full_disk_injected_json_write_fails_that_photo_only(checkpoint, photos, tmp_path, monkeypatch, capsys):
    """ENOSPC injected into the first photo's JSON write: that photo fails with one line naming the
    file, none of its files are left (not even its meshes), and the next photo is written."""
    import mofa.reconstruct as rec

    real = rec.write_bytes

    def full_for_the_first(path: Path, data: bytes) -> None:
        if path.suffix == ".json" and path.name.startswith(photos[0].stem):
            with open(path, "wb") as fh:
                fh.write(data[: len(data) // 2])  # as a full disk: part written, then the error
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data)

    monkeypatch.setattr(rec, "write_bytes", full_for_the_first)
    out = tmp_path / "out"
    assert main(["reconstruct", *map(str, photos), "--out", str(out), "--checkpoint", str(checkpoint)]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mofa reconstruct: ")]
    assert len(err) == 1 and f"{photos[0].stem}_face0.json: cannot write (No space left on device)" in err[0], err
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{photos[1].stem}_face0{s}" for s in (".json", ".obj", ".ply", "_overlay.png"))


def test_open3d_cut_short_on_a_full_disk_is_caught(tmp_path, monkeypatch):
    """Open3D returns True with the mesh cut short on a full disk: the read-back check says so."""
    import open3d as o3d

    from mofa.reconstruct import _write, _write_mesh
    vertices = np.random.default_rng(0).random((5000, 3))
    triangles = np.stack([np.arange(4998), np.arange(1, 4999), np.arange(2, 5000)], 1)
    target = tmp_path / "tiny"
    with tmpfs(target, "64k") as mounted:
        if not mounted:  # inject it: Open3D writes, then the file is cut as a full disk would cut it
            real = o3d.io.write_triangle_mesh

            def cut_short(path, mesh, **kwargs):
                ok = real(path, mesh, **kwargs)
                with open(path, "r+b") as fh:
                    fh.truncate(65536)
                return ok
            monkeypatch.setattr(o3d.io, "write_triangle_mesh", cut_short)
        for suffix in (".ply", ".obj"):
            path = target / f"mesh{suffix}"
            with pytest.raises(MofaError, match=f"mesh{suffix}: Open3D could not write the mesh whole"):
                _write(path, lambda p: _write_mesh(p, vertices, triangles, vertices))
            path.unlink(missing_ok=True)


# -- mofa evaluate ----------------------------------------------------------------------------------------

def test_evaluate_with_a_corrupt_encoder_card(checkpoint, aflw_folder, tmp_path, capsys):
    shutil.copy(checkpoint, tmp_path / "encoder.pt")
    (tmp_path / "encoder.json").write_text('{"encoder": "alexnet", ')
    out = tmp_path / "nme.csv"
    line = assert_one_line_error(run(capsys, "evaluate", "aflw2000", "--root", str(aflw_folder), "--checkpoint",
                                      str(tmp_path / "encoder.pt"), "--out", str(out)), tmp_path / "encoder.json")
    assert "not a readable encoder card" in line
    assert not out.exists() and leftovers(tmp_path) == []


def test_evaluate_out_under_a_regular_file_fails_before_the_evaluation(checkpoint, aflw_folder, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run(capsys, "evaluate", "aflw2000", "--root", str(aflw_folder), "--checkpoint", str(checkpoint),
                  "--out", str(blocker / "nme.csv"))
    assert "cannot write there" in assert_one_line_error(result, blocker)
    assert "AFLW2000-3D NME" not in result.stdout  # stopped before the evaluation, not after it
    assert blocker.read_text() == "not a folder"
    line = assert_one_line_error(run(capsys, "evaluate", "aflw2000", "--root", str(aflw_folder), "--checkpoint", str(checkpoint),
                                      "--out", str(tmp_path)), tmp_path)
    assert "is a folder" in line


def test_evaluate_with_a_malformed_yaml_config(checkpoint, aflw_folder, tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text("preset: ci\nreal_data: [margin: 0.4\n")
    line = assert_one_line_error(run(capsys, "evaluate", "aflw2000", "--root", str(aflw_folder), "--checkpoint", str(checkpoint),
                                      "--config", str(config)), config)
    assert "not valid YAML" in line


def test_a_malformed_mat_is_skipped_with_its_reason_and_the_benchmark_goes_on(checkpoint, aflw_folder, tmp_path):
    folder = tmp_path / "aflw"
    shutil.copytree(aflw_folder, folder, symlinks=True)
    bad = sorted(folder.glob("*.mat"))[1]
    bad.unlink()
    bad.write_bytes(b"MATLAB 5.0 MAT-file" + b"\x00" * 200)
    out = tmp_path / "nme.csv"
    result = mofa("evaluate", "aflw2000", "--root", str(folder), "--checkpoint", str(checkpoint),
                  "--out", str(out))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and str(bad) in lines[0] and "not an AFLW2000-3D annotation" in lines[0], result.stderr
    assert "images: 3 in the folder, 2 scored" in result.stdout and "unreadable: 1" in result.stdout, result.stdout
    table = out.read_text().splitlines()
    assert table[0] == "bin,nme,nme_percent,images" and table[-1].startswith("mean,")
    assert int(table[-1].split(",")[-1]) >= 1  # the others were scored
    assert leftovers(tmp_path) == []


def test_a_malformed_pts_is_dropped_with_its_reason(tmp_path):
    """ibug68: a broken .pts beside a good one; the preparation keeps the good one and records why
    the other was dropped."""
    from mofa.realdata.adapters import iter_ibug68
    from mofa.realdata.prepare import prepare

    folder = tmp_path / "ibug"
    folder.mkdir()
    for name in ("lfpw_image_0001", "lfpw_image_0002"):
        for suffix in (".png", ".pts"):
            shutil.copy(ibug_folder() / f"{name}{suffix}", folder / f"{name}{suffix}")
    (folder / "lfpw_image_0002.pts").write_text("version: 1\nn_points: 68\n{\n1 2\nthree 4\n}\n")
    summary = prepare(iter_ibug68(folder), tmp_path / "prepared", eval_fraction=0.0, progress=False)
    assert summary["total"] == 2 and summary["kept"] == 1 and summary["dropped"]["unreadable"] == 1
    manifest = (tmp_path / "prepared" / "manifest.csv").read_text()
    assert "lfpw_image_0002.pts: a line inside '{ ... }' is not two numbers" in manifest
    assert not (tmp_path / "prepared.partial").exists()


def test_evaluate_table_on_a_full_disk_leaves_no_partial_file(tmp_path, monkeypatch):
    """The CSV writer of `mofa evaluate` on a full tmpfs (else an injected ENOSPC): one MofaError naming
    the file, no partial or temporary file left, an older file of that name kept as it was."""
    import pandas as pd

    from mofa.cli import write_csv_atomic
    frame = pd.DataFrame({"x": np.arange(20000.0)})
    target = tmp_path / "tiny"
    with tmpfs(target, "16k") as mounted:
        target.mkdir(exist_ok=True)
        (target / "nme.csv").write_text("old\n")
        if not mounted:
            real = os.fsync

            def full(fd):
                real(fd)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            monkeypatch.setattr(os, "fsync", full)
        with pytest.raises(MofaError, match="nme.csv: cannot write \\(No space left on device\\)"):
            write_csv_atomic(frame, target / "nme.csv")
        assert (target / "nme.csv").read_text() == "old\n" and leftovers(target) == []


# -- inputs tried in issue 22's second round --------------------------------------------------------------

def test_reconstruct_takes_folders_and_keeps_photos_of_one_name_apart(checkpoint, photos, tmp_path, capsys):
    """Folders expand to their images; a/x.png and b/x.png write a_x_* and b_x_* (neither overwrites
    the other); a photo given twice is reconstructed once; a run folder is a checkpoint."""
    for folder, photo in (("a", photos[0]), ("b", photos[1])):
        (tmp_path / folder).mkdir()
        shutil.copy(photo, tmp_path / folder / "x.png")
    out = tmp_path / "out"
    result = run(capsys, "reconstruct", str(tmp_path / "a"), str(tmp_path / "b" / "x.png"), str(tmp_path / "a" / "x.png"),
                 "--out", str(out), "--checkpoint", str(checkpoint.parent))
    assert result.returncode == 0, result.stderr
    assert "2 faces reconstructed, 0 photos failed" in result.stdout
    assert sorted(p.name for p in out.glob("*.json")) == ["a_x_face0.json", "b_x_face0.json"]
    assert json.loads((out / "a_x_face0.json").read_text())["photo"].endswith(str(Path("a") / "x.png"))
    assert json.loads((out / "b_x_face0.json").read_text())["photo"].endswith(str(Path("b") / "x.png"))
    for _ in range(2):  # into the photos' own folder, twice: the overlays written there are not photos
        result = run(capsys, "reconstruct", str(tmp_path / "a"), "--out", str(tmp_path / "a"), "--checkpoint",
                     str(checkpoint))
        assert "1 face reconstructed, 0 photos failed" in result.stdout, result.stdout + result.stderr
    assert sorted(p.name for p in (tmp_path / "a").glob("*.json")) == ["x_face0.json"]
    empty = tmp_path / "empty"
    empty.mkdir()
    line = assert_one_line_error(run(capsys, "reconstruct", str(empty), "--out", str(out), "--checkpoint",
                                     str(checkpoint)), empty)
    assert "no image files" in line


def test_reconstruct_removes_the_faces_an_earlier_run_found_and_this_one_did_not(checkpoint, photos, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    stem = photos[0].stem
    stale = [out / f"{stem}_face1{suffix}" for suffix in (".ply", ".obj", "_overlay.png", ".json")]
    for path in stale:
        path.write_text("from an earlier run")
    other = out / f"{stem}_notes.txt"
    other.write_text("the user's")
    assert run(capsys, "reconstruct", str(photos[0]), "--out", str(out), "--checkpoint", str(checkpoint)).returncode == 0
    assert (out / f"{stem}_face0.json").is_file()
    assert not any(p.exists() for p in stale)
    assert other.read_text() == "the user's"


@pytest.mark.parametrize("key, value, problem", [
    ("input_size", "big", "'input_size' is a string, expected an integer"),
    ("rotation_bound_deg", "x", "'rotation_bound_deg' is a string, expected a number or null"),
    ("code_layout", [1, 2], "'code_layout' is a list, expected an object"),
    ("options", 3, "'options' is an integer, expected an object or null")])
def test_an_encoder_card_entry_of_the_wrong_type_is_one_line(checkpoint, photos, tmp_path, capsys, key, value, problem):
    shutil.copy(checkpoint, tmp_path / "encoder.pt")
    card = json.loads(checkpoint.with_name("encoder.json").read_text()) | {key: value}
    (tmp_path / "encoder.json").write_text(json.dumps(card))
    line = assert_one_line_error(run(capsys, "reconstruct", str(photos[0]), "--out", str(tmp_path / "out"),
                                     "--checkpoint", str(tmp_path / "encoder.pt")), tmp_path / "encoder.json")
    assert problem in line


@pytest.mark.parametrize("content", [b"", os.urandom(4096), b"PK\x03\x04" + os.urandom(2000)])
def test_corrupt_weights_are_one_short_line(checkpoint, photos, tmp_path, capsys, content):
    (tmp_path / "encoder.pt").write_bytes(content)
    shutil.copy(checkpoint.with_name("encoder.json"), tmp_path / "encoder.json")
    line = assert_one_line_error(run(capsys, "reconstruct", str(photos[0]), "--out", str(tmp_path / "out"),
                                     "--checkpoint", str(tmp_path / "encoder.pt")), tmp_path / "encoder.pt")
    assert "unreadable weights" in line and len(line) < 400


def test_evaluate_encoder_flag_that_contradicts_the_card(checkpoint, aflw_folder, capsys):
    line = assert_one_line_error(run(capsys, "evaluate", "aflw2000", "--root", str(aflw_folder), "--checkpoint",
                                     str(checkpoint), "--encoder", "dlib_resnet"), checkpoint.with_name("encoder.json"))
    assert "alexnet encoder" in line


@pytest.mark.parametrize("args", [["bench", "train", "--batch", "0"], ["bench", "decoder", "--images", "-2"],
                                  ["evaluate", "aflw2000", "--root", ".", "--checkpoint", "x.pt", "--limit", "0"],
                                  ["evaluate", "aflw2000", "--root", ".", "--checkpoint", "x.pt", "--input-size", "0"],
                                  ["detection-rate", "--limit", "0"], ["bench", "train", "--processes", "two"]])
def test_counts_and_sizes_below_one_are_refused_by_the_parser(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines  # argparse's usage is not printed first
    assert "must be at least 1" in lines[0] or "is not a whole number" in lines[0]


@pytest.mark.parametrize("args", [[], ["--bogus"], ["reconstruct"], ["evaluate", "nme"]])
def test_a_command_line_argparse_refuses_is_one_line(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1 and lines[0].startswith("mofa"), lines
    assert "--help lists the options" in lines[0]


def test_a_config_that_is_not_utf8_text_is_one_line(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_bytes(b"\xff\xfepreset: ci\n")
    line = assert_one_line_error(run(capsys, "model-info", "ict", "--config", str(config)), config)
    assert "not a YAML text file" in line


def test_mediapipe_start_up_says_nothing(checkpoint, cache, photos, tmp_path):
    """MediaPipe's C++ side logs to fd 2 when its graph starts; a user sees only the tool's lines."""
    result = mofa("reconstruct", str(photos[0]), "--out", str(tmp_path / "out"), "--checkpoint", str(checkpoint),
                  env={**ENV, "MOFA_CACHE_DIR": str(cache)})
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_a_cut_short_face_model_cache_is_built_again(ict_dir, tmp_path, monkeypatch, caplog):
    from mofa.facemodel import build_face_model, cache_path
    from mofa.settings import load_settings
    monkeypatch.setenv("MOFA_CACHE_DIR", str(tmp_path))
    fm = load_settings("ci").face_model
    expected = build_face_model(fm)
    path = cache_path(fm)
    path.write_bytes(path.read_bytes()[:1000])
    again = build_face_model(fm)
    assert np.array_equal(again.mean_shape, expected.mean_shape)
    assert "not a readable face-model .npz" in caplog.text
    assert np.array_equal(build_face_model(fm).mean_shape, expected.mean_shape)  # the rewritten cache reads


def test_a_cache_folder_that_is_a_file_names_it(ict_dir, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "cache"
    blocker.write_text("a file")
    monkeypatch.setenv("MOFA_CACHE_DIR", str(blocker))
    line = assert_one_line_error(run(capsys, "model-info", "ict", "--config", "ci", "--rebuild"), blocker)
    assert f"{blocker} is a file, not a folder" in line


def test_a_reader_that_goes_away_ends_the_command_quietly(cache):
    """`mofa model-info ict | head -0`: the pipe is closed before mofa writes; no traceback, no error
    line, exit status 141 (128 + SIGPIPE) as a shell reports such a writer."""
    process = subprocess.Popen([sys.executable, "-m", "mofa.cli", "model-info", "ict", "--config", "ci"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**ENV, "MOFA_CACHE_DIR": str(cache)})
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141, stderr
    assert stderr.strip() == "", stderr


def test_detection_rate_where_no_image_can_be_scored_says_so(tmp_path, capsys, monkeypatch):
    (tmp_path / "takeo.ppm").write_text("not an image")
    shutil.copy(ibug_folder() / "takeo.pts", tmp_path / "takeo.pts")
    monkeypatch.setenv("MOFA_IBUG68_DIR", str(tmp_path))
    result = run(capsys, "detection-rate", "--datasets", "ibug68", "--detectors", "haar")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert lines[0].startswith(f"mofa detection-rate: {tmp_path / 'takeo.ppm'}: skipped, not a readable image")
    assert lines[-1] == f"mofa: error: {tmp_path}: none of the 1 ibug68 images could be scored (each skipped above, with its reason)"


# -- inputs tried in issue 22's third round ---------------------------------------------------------------

def test_a_large_photo_is_no_decompression_bomb_and_a_truncated_one_says_one_thing(tmp_path, capfd, monkeypatch):
    """Pillow's bomb guard (a warning over 89 Mpx, a traceback over 179 Mpx: a 16000 x 12000 photo) is not
    applied to a photo OpenCV has already decoded; libjpeg's 'Premature end of JPEG file' on fd 2 is not
    shown beside the tool's own line."""
    import warnings

    from PIL import Image

    from mofa.realdata.images import FrameReader, UnreadableImage
    photo = ibug_folder() / "einstein.jpg"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # this photo stands for one over the limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert FrameReader().read(photo).ndim == 3
    assert Image.MAX_IMAGE_PIXELS == 1000
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(photo.read_bytes()[:5000])
    capfd.readouterr()
    with pytest.raises(UnreadableImage, match="truncated"):
        FrameReader().read(cut)
    assert capfd.readouterr().err == ""


def test_a_photo_that_is_no_regular_file_says_what_it_is(tmp_path):
    from mofa.realdata.images import FrameReader, UnreadableImage
    (tmp_path / "link.jpg").symlink_to(tmp_path / "gone.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")  # cv2.imread on it would wait for a writer for ever
    for name, problem in (("link.jpg", f"a broken link (to {tmp_path / 'gone.jpg'})"),
                          ("pipe.jpg", "not a regular file"), ("none.jpg", "no such file")):
        with pytest.raises(UnreadableImage) as error:
            FrameReader().read(tmp_path / name)
        assert str(error.value) == problem


def test_a_photo_name_too_long_for_its_outputs_fails_before_the_work(checkpoint, photos, tmp_path, capsys, monkeypatch):
    import mofa.reconstruct as rec
    long_photo = shutil.copy(photos[0], tmp_path / f"{'x' * 240}.png")
    monkeypatch.setattr(rec, "read_photo", lambda path: pytest.fail("read before its name was checked"))
    out = tmp_path / "out"
    line = assert_one_line_error(run(capsys, "reconstruct", str(long_photo), "--out", str(out), "--checkpoint",
                                     str(checkpoint)), long_photo)
    assert "name too long for its output files" in line and leftovers(out) == []


@pytest.mark.parametrize("key, value, problem", [
    ("encoder", "resnet9000", "unknown encoder 'resnet9000'"),
    ("preset", "nopreset", "unknown preset 'nopreset'"),
    ("camera", {"image_size": "big"}, "camera.image_size: 'big' is not of type 'integer'"),
    ("input_size", 31, "input size 31 px, but the alexnet encoder needs at least 63 px")])
def test_a_card_whose_settings_do_not_build_is_named(checkpoint, photos, aflw_folder, tmp_path, capsys, key, value, problem):
    """What a card says (its preset, settings, encoder, input size) is checked when it is loaded, and
    the error names the card, for `mofa reconstruct` and `mofa evaluate` alike."""
    shutil.copy(checkpoint, tmp_path / "encoder.pt")
    card = json.loads(checkpoint.with_name("encoder.json").read_text()) | {key: value}
    (tmp_path / "encoder.json").write_text(json.dumps(card))
    line = assert_one_line_error(run(capsys, "reconstruct", str(photos[0]), "--out", str(tmp_path / "out"),
                                     "--checkpoint", str(tmp_path)), tmp_path / "encoder.json")
    assert problem in line
    result = run(capsys, "evaluate", "aflw2000", "--root", str(aflw_folder), "--checkpoint", str(tmp_path))
    assert "AFLW2000-3D NME" not in result.stdout
    assert problem in assert_one_line_error(result, tmp_path / "encoder.json")


def test_a_checkpoint_folder_without_weights_is_named_as_such(photos, tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    line = assert_one_line_error(run(capsys, "reconstruct", str(photos[0]), "--out", str(tmp_path / "out"),
                                     "--checkpoint", str(folder)), folder)
    assert "a folder without encoder.pt" in line


def test_evaluate_input_size_below_the_encoders_and_outputs_over_its_inputs(checkpoint, aflw_folder, tmp_path, capsys):
    """Refused before the evaluation: an --input-size the encoder cannot take, --out and --landmarks-out
    of one name, an output over the checkpoint, its card or an annotation of --root."""
    root = tmp_path / "aflw"
    shutil.copytree(aflw_folder, root, symlinks=True)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("encoder.pt", "encoder.json"):
        shutil.copy(checkpoint.with_name(name), run_dir / name)
    mat = sorted(root.glob("*.mat"))[0]
    evaluate = ("evaluate", "aflw2000", "--root", str(root), "--checkpoint", str(run_dir))
    cases = [(["--input-size", "40"], "--input-size", "input size 40 px, but the alexnet encoder needs at least 63 px"),
             (["--out", str(tmp_path / "t.csv"), "--landmarks-out", str(tmp_path / "t.csv")], tmp_path / "t.csv",
              "given as both --out and --landmarks-out"),
             (["--out", str(run_dir / "encoder.pt")], run_dir / "encoder.pt", "is the checkpoint"),
             (["--landmarks-out", str(run_dir / "encoder.json")], run_dir / "encoder.json", "is the checkpoint's encoder card"),
             (["--out", str(mat)], mat, "is an image or annotation of --root")]
    before = {p: p.read_bytes() for p in (run_dir / "encoder.json", mat)}
    for extra, named, problem in cases:
        result = run(capsys, *evaluate, *extra)
        assert problem in assert_one_line_error(result, named) and "AFLW2000-3D NME" not in result.stdout
    assert {p: p.read_bytes() for p in before} == before and mat.is_symlink()


def test_aflw2000_points_that_span_no_area_are_skipped_and_a_root_that_is_a_file_is_named(aflw_folder, tmp_path):
    """All-zero pt3d_68 would divide the NME by a box of no size (an infinite NME, 'scored')."""
    from scipy.io import loadmat, savemat

    from mofa.realdata.adapters import iter_aflw2000
    folder = tmp_path / "aflw"
    shutil.copytree(aflw_folder, folder, symlinks=True)
    flat = sorted(folder.glob("*.mat"))[0]
    annotation = loadmat(flat)
    flat.unlink()
    savemat(flat, {"pt3d_68": np.zeros((3, 68)), "Pose_Para": annotation["Pose_Para"]})
    samples = list(iter_aflw2000(folder))
    assert [s.problem for s in samples if s.problem] == [f"{flat}: not an AFLW2000-3D annotation (need pt3d_68 3x68 "
                                                         "and Pose_Para): the 68 points of pt3d_68 span no area"]
    with pytest.raises(MofaError, match=f"{flat}: a file, not a folder"):
        list(iter_aflw2000(flat))


def test_a_read_only_face_model_cache_is_named_before_the_build(ict_dir, tmp_path, capsys, monkeypatch):
    """The cache folder is checked before the model is built, and the error names it, not the
    temporary file the write would have used."""
    import mofa.facemodel as facemodel
    monkeypatch.setattr(facemodel, "load_face_model", lambda fm: pytest.fail("built before the cache was checked"))
    folder = tmp_path / "read-only"
    with tmpfs(folder, "1m", read_only=True) as mounted:
        if not mounted:  # no mount here: a file where the folder should be is checked at the same point
            folder = tmp_path / "a-file"
            folder.write_text("")
        monkeypatch.setenv("MOFA_CACHE_DIR", str(folder))
        line = assert_one_line_error(run(capsys, "model-info", "ict", "--config", "ci", "--rebuild"), folder)
        assert line.startswith(f"mofa: error: {folder}: cannot write there (") and ".tmp" not in line


def test_report_reads_the_projects_results_from_any_folder_and_names_a_table_without_its_columns(tmp_path, capsys,
                                                                                                   monkeypatch):
    """From a folder without a results/ of its own (where Snakemake would have written it), `mofa report`
    reads this checkout's; a table without the columns its rows need is one line naming it."""
    monkeypatch.chdir(tmp_path)
    result = run(capsys, "report", "--preset", "ci")
    tables = REPO_ROOT / "results" / "ci"
    assert str(tables) in (result.stdout if result.returncode == 0 else assert_one_line_error(result, tables))
    config = tmp_path / "mine.yaml"
    config.write_text(f"preset: ci\nresults_dir: {tmp_path / 'results'}\n")
    (tmp_path / "results" / "ci" / "tables").mkdir(parents=True)
    for name, column in (("e1_synthetic.csv", "metric"), ("e3_variants.csv", "variant")):
        table = tmp_path / "results" / "ci" / "tables" / name
        table.write_text("garbage,x\n1,2\n")
        line = assert_one_line_error(run(capsys, "report", "--preset", str(config)), table)
        assert f"not a readable result table (no column {column})" in line
        table.unlink()


def test_bench_on_a_device_this_machine_lacks_is_one_line_also_over_processes(capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    for extra in ([], ["--processes", "2", "--encoders", "alexnet"]):
        line = assert_one_line_error(run(capsys, "bench", "train", "--device", "cuda", "--config", "ci", *extra))
        assert "cuda asked, but this torch" in line and "processes failed" not in line


def test_sigterm_mid_photo_leaves_none_of_its_files_and_a_killed_runs_staging_is_cleared(checkpoint, photos, tmp_path,
                                                                                          capsys, monkeypatch):
    """SIGTERM (kill, timeout) ends `mofa reconstruct` as Ctrl-C does: one line, status 143, none of the
    photo's files; the hidden staging folder a SIGKILL leaves is removed by the next run."""
    import signal

    import mofa.reconstruct as rec
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".{photos[0].stem}.k1ll3d_x"
    stale.mkdir()
    (stale / f"{photos[0].stem}_face0.ply").write_text("cut short")
    real, handler = rec._write_png, signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(rec, "_write_png", lambda path, rgb: os.kill(os.getpid(), signal.SIGTERM))
    result = run(capsys, "reconstruct", *map(str, photos), "--out", str(out), "--checkpoint", str(checkpoint))
    assert result.returncode == 143 and error_lines(result.stderr) == ["mofa: terminated"], result.stderr
    assert list(out.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is handler  # main put back the handler it found
    monkeypatch.setattr(rec, "_write_png", real)
    stale.mkdir()
    assert run(capsys, "reconstruct", str(photos[0]), "--out", str(out), "--checkpoint", str(checkpoint)).returncode == 0
    assert leftovers(out) == [] and (out / f"{photos[0].stem}_face0.json").is_file()


def test_an_input_size_too_large_for_memory_is_one_line(checkpoint, aflw_folder, capsys):
    line = assert_one_line_error(run(capsys, "evaluate", "aflw2000", "--root", str(aflw_folder), "--checkpoint",
                                     str(checkpoint), "--input-size", "100000"))
    assert "out of memory" in line and "--input-size" in line


def test_an_aflw2000_image_without_its_mat_is_counted_with_its_reason(aflw_folder, tmp_path):
    from mofa.realdata.adapters import iter_aflw2000
    folder = tmp_path / "aflw"
    folder.mkdir()
    images = sorted(aflw_folder.glob("*.jpg"))
    for image in images:
        (folder / image.name).symlink_to(image.resolve())
    for image in images[1:]:
        (folder / image.with_suffix(".mat").name).symlink_to(image.with_suffix(".mat").resolve())
    samples = list(iter_aflw2000(folder))
    assert [s.image_path.name for s in samples] == [i.name for i in images]
    assert samples[0].problem == f"{folder / images[0].name}: no {images[0].stem}.mat annotation beside it"
    assert all(s.problem is None for s in samples[1:])
