"""The pipeline under a kill, a full disk and a bad config: training killed under Snakemake resumes to
the same tables; a stage on a full disk ends with one line (also in its own log) and leaves nothing
partial; a deleted intermediate is regenerated; Snakemake gives the project's config messages.
(mofa/io.py's atomic writers are tested here too; the `mofa` command's cases: tests/test_robustness.py.)

The full disk is a small tmpfs where this process may mount one (root); elsewhere the writes fail with
an injected ENOSPC at the point where mofa/io.py syncs a file to disk."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mofa import io
from mofa.config import REPO_ROOT, load_config
from mofa.errors import MofaError
from mofa.training.trainer import CHECKPOINT, FINAL, METRICS
from pipelines import _stage, paths

ENV = {**os.environ, "OMP_NUM_THREADS": "2"}
# As tests/test_robustness.py's TINY, with AlexNet alone: the ci preset's E1 in seconds.
TINY = {"synthetic.n_train": 8, "synthetic.n_test": 2, "training.batch_size": 2, "training.eval_images": 2,
        "training.checkpoint_every": 2, "e1.iterations": 6, "e1.evaluations": 2, "e1.encoders": ["alexnet"]}


def leftovers(folder: Path) -> list[Path]:
    """Temporary files and .partial folders under `folder`."""
    return [p for p in folder.rglob("*") if io.TEMPORARY.fullmatch(p.name) or p.name.endswith(io.PARTIAL_SUFFIX)]


# -- a full disk ---------------------------------------------------------------------------------------

def _can_mount_tmpfs(probe: Path) -> bool:
    probe.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True).returncode:
        return False
    subprocess.run(["umount", str(probe)], check=True)
    return True


@pytest.fixture
def full_disk(tmp_path, monkeypatch):
    """disk(size_kb) -> a folder on a file system that holds about size_kb (a tmpfs), or, where none can
    be mounted, a folder where every atomic write fails with ENOSPC."""
    mounted = []

    def disk(size_kb: int) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        if _can_mount_tmpfs(tmp_path / "probe"):
            folder.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)], check=True)
            mounted.append(folder)
        else:
            folder.mkdir()
            sync = io._fsync

            def failing_sync(path: Path) -> None:
                if Path(path).resolve().is_relative_to(folder.resolve()):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
                sync(path)
            monkeypatch.setattr(io, "_fsync", failing_sync)
            link = os.link

            def cross_device_link(source, target, *args, **kwargs):  # a tmpfs is another file system
                if Path(target).resolve().is_relative_to(folder.resolve()):
                    raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(source))
                return link(source, target, *args, **kwargs)
            monkeypatch.setattr(os, "link", cross_device_link)
            mounted.append(None)
        return folder

    yield disk
    for folder in mounted:
        if folder is not None:
            subprocess.run(["umount", str(folder)], check=True)


def run_stage(module, overrides: dict, log: Path, capsys) -> tuple[int, list[str]]:
    """A stage's entry point in this process; returns (exit status, its ERROR lines on stderr)."""
    argv = ["--config", "ci", "--log", str(log)] + [a for k, v in overrides.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    status = _stage.main(module.NAME, module.run, "test", argv)
    return status, [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]


def assert_failed_in_one_line(status: int, errors: list[str], log: Path, *names) -> str:
    assert status == 2
    assert len(errors) == 1, errors
    for name in names:
        assert str(name) in errors[0], (name, errors[0])
    text = log.read_text()
    assert "Traceback" not in text
    assert text.splitlines()[-1] == errors[0]  # the stage's own log ends with the error, not a success
    return errors[0]


def test_face_model_stage_on_a_full_disk_leaves_no_cut_short_model(cache, full_disk, tmp_path, capsys, restore_logging):
    """The model is cached elsewhere; its published copy does not fit on the results disk."""
    from pipelines import face_model
    disk = full_disk(256)  # the ci model's .npz is several MB
    log = tmp_path / "face_model.log"
    status, errors = run_stage(face_model, {"results_dir": str(disk), "face_model.cache_dir": str(cache)}, log, capsys)
    model = face_model.outputs(load_config("ci", {"results_dir": str(disk)}))["model"]
    line = assert_failed_in_one_line(status, errors, log, model, "No space left on device")
    assert "stage face_model failed" in line
    assert not model.exists() and not leftovers(disk)


def test_face_model_cache_on_a_full_disk(ict_dir, full_disk, tmp_path, capsys, restore_logging):
    """The model is built, and its cache file does not fit: one line, no cache file, no temporary."""
    from mofa.facemodel import cache_path
    from mofa.settings import load_settings
    from pipelines import face_model
    disk = full_disk(256)
    log = tmp_path / "face_model.log"
    overrides = {"results_dir": str(tmp_path / "results"), "face_model.cache_dir": str(disk)}
    status, errors = run_stage(face_model, overrides, log, capsys)
    cached = cache_path(load_settings("ci", overrides).face_model)
    assert_failed_in_one_line(status, errors, log, cached, "No space left on device")
    assert not cached.exists() and not leftovers(disk)


def test_synthetic_stage_on_a_full_disk_leaves_no_partial_split(cache, full_disk, tmp_path, capsys, restore_logging):
    from pipelines import synthetic
    disk = full_disk(512)  # 8 training images of 240 x 240 x 3 are 1.4 MB
    log = tmp_path / "synthetic.log"
    overrides = {**TINY, "results_dir": str(disk), "face_model.cache_dir": str(cache)}
    status, errors = run_stage(synthetic, overrides, log, capsys)
    assert_failed_in_one_line(status, errors, log, synthetic.data_dir(load_config("ci", overrides)), "No space left")
    assert not any(p.is_file() for p in synthetic.outputs(load_config("ci", overrides)).values())
    assert not leftovers(disk)


def test_real_data_stage_on_a_full_disk_leaves_no_partial_folder(aflw_dir, ibug_dir, full_disk, tmp_path, capsys,
                                                                  restore_logging):
    from pipelines import real_data
    disk = full_disk(128)  # one crop (240 x 240 x 3: 169 kB) does not fit
    log = tmp_path / "real_data.log"
    overrides = {"results_dir": str(disk), "real_data.max_images": 4}
    status, errors = run_stage(real_data, overrides, log, capsys)
    folder = real_data.folder(load_config("ci", overrides), "aflw2000")
    assert_failed_in_one_line(status, errors, log, folder, "No space left")
    assert not folder.exists() and not io.partial_dir(folder).exists() and not leftovers(disk)


def test_a_stage_that_fails_on_a_bug_logs_its_traceback_and_removes_its_partial_folder(aflw_dir, ibug_dir, tmp_path,
                                                                                       monkeypatch, capsys,
                                                                                       restore_logging):
    """Not a user's problem but a bug: the traceback goes to stderr and into the stage's own log, and
    the half-prepared folder is gone."""
    from mofa.realdata import prepare
    from pipelines import real_data
    calls = []

    def fails_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        return None  # the photo is dropped
    monkeypatch.setattr(prepare, "_prepare_one", fails_on_the_second)
    log = tmp_path / "real_data.log"
    overrides = {"results_dir": str(tmp_path / "results"), "real_data.max_images": 3}
    status = _stage.main(real_data.NAME, real_data.run, "test", ["--config", "ci", "--log", str(log)] +
                         [a for k, v in overrides.items() for a in ("--set", f"{k}={json.dumps(v)}")])
    capsys.readouterr()
    assert status == 1
    text = log.read_text()
    assert "stage real_data failed" in text and "RuntimeError: injected failure" in text
    folder = real_data.folder(load_config("ci", overrides), "aflw2000")
    assert not folder.exists() and not io.partial_dir(folder).exists()


# -- mofa/io.py ----------------------------------------------------------------------------------------

def test_atomic_writers_round_trip_with_a_normal_mode_and_no_temporary(tmp_path):
    data = {"b": [1, 2.5], "a": "x"}
    io.write_json(tmp_path / "d.json", data)
    assert json.loads((tmp_path / "d.json").read_text()) == data
    assert (tmp_path / "d.json").read_text() == json.dumps(data, indent=2, sort_keys=True) + "\n"
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    io.save_npy(tmp_path / "a.npy", array)
    io.save_npz(tmp_path / "m.npz", {"x": array})
    io.torch_save({"w": torch.ones(2)}, tmp_path / "w.pt")
    assert np.array_equal(np.load(tmp_path / "a.npy"), array)
    assert np.array_equal(np.load(tmp_path / "m.npz")["x"], array)
    assert torch.equal(torch.load(tmp_path / "w.pt", weights_only=True)["w"], torch.ones(2))
    umask = os.umask(0)
    os.umask(umask)
    assert {p.name for p in tmp_path.iterdir()} == {"d.json", "a.npy", "m.npz", "w.pt"}
    assert all((p.stat().st_mode & 0o777) == 0o666 & ~umask for p in tmp_path.iterdir())


def test_atomic_write_that_fails_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = io.write_text(tmp_path / "t.txt", "old\n")
    with pytest.raises(RuntimeError, match="half-way"):
        with io.atomic_open(target) as fh:
            fh.write("new, cut short")
            raise RuntimeError("half-way")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_atomic_write_on_a_full_disk_is_one_line_naming_the_file(full_disk):
    disk = full_disk(64)
    target = io.write_bytes(disk / "big.bin", b"old")
    with pytest.raises(MofaError) as error:
        io.write_bytes(target, os.urandom(256 * 1024))
    assert str(error.value) == f"{target}: cannot write (No space left on device)"
    assert target.read_bytes() == b"old" and [p.name for p in disk.iterdir()] == ["big.bin"]


def test_atomic_write_under_a_file_names_it(tmp_path):
    (tmp_path / "file").write_text("")
    blocker = tmp_path / "file"
    with pytest.raises(MofaError) as error:
        io.write_text(blocker / "x.txt", "x")
    assert str(error.value) == f"{blocker / 'x.txt'}: cannot write ({blocker} is a file, not a folder)"


def test_atomic_dir_replaces_when_complete_and_removes_when_not(tmp_path):
    folder = tmp_path / "set"
    with io.atomic_dir(folder) as partial:
        (partial / "a.txt").write_text("1")
    with pytest.raises(RuntimeError):
        with io.atomic_dir(folder) as partial:
            (partial / "b.txt").write_text("2")
            raise RuntimeError("killed")
    assert [p.name for p in folder.iterdir()] == ["a.txt"] and not io.partial_dir(folder).exists()
    with io.atomic_dir(folder) as partial:
        (partial / "c.txt").write_text("3")
    assert [p.name for p in folder.iterdir()] == ["c.txt"]


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    with io.atomic_path(tmp_path / "checkpoint.pt") as tmp:
        stale = tmp.with_name(tmp.name.replace(".tmp", "x.tmp"))
        stale.write_bytes(b"cut short")  # as a writer killed mid-write leaves it
        tmp.write_bytes(b"complete")
    (tmp_path / ".hidden").write_text("keep")
    assert io.remove_stale_temporaries(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "checkpoint.pt"]


# -- Snakemake: a kill mid-training, a deleted intermediate, the config check ----------------------------

def tiny_preset(folder: Path, cache: Path) -> Path:
    """A config file with TINY's keys on top of the ci preset (Snakemake's --config takes no dotted keys)."""
    from mofa.config import nest
    path = folder / "tiny.yaml"
    path.write_text(json.dumps(nest({**TINY, "face_model.cache_dir": str(cache)})))
    return path


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", *args, "--snakefile", str(REPO_ROOT / "Snakefile"), "--directory",
            str(workdir), "--cores", "2", "--configfile", str(REPO_ROOT / "config" / "ci.yaml"),
            str(workdir / "tiny.yaml")]


@pytest.fixture(scope="module")
def reference_e1(cache, tmp_path_factory) -> dict:
    """E1 at TINY without interruption, the stages run directly."""
    from pipelines import face_model, synthetic
    root = tmp_path_factory.mktemp("reference")
    preset = tiny_preset(root, cache)
    cfg = load_config(["ci", preset], {"results_dir": str(root / "results")})
    for module in (face_model, synthetic):
        module.run(cfg)
    argv = [sys.executable, "-m", "pipelines.e1_synthetic", "--config", "ci", "--config", str(preset),
            "--set", f"results_dir={root / 'results'}"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=ENV, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return cfg


@pytest.fixture(scope="module")
def killed_and_rerun(cache, tmp_path_factory) -> dict:
    """Snakemake runs E1 (and the stages before it) in a fresh folder and is killed with SIGKILL on its
    process group once the first encoder has a checkpoint; then `make reproduce`'s two commands run."""
    from pipelines import e1_synthetic
    workdir = tmp_path_factory.mktemp("snakemake")
    preset = tiny_preset(workdir, cache)
    cfg = load_config(["ci", preset], {"results_dir": str(workdir / "results")})
    run = e1_synthetic.run_dir(cfg, cfg["e1"]["encoders"][0])
    process = subprocess.Popen(snakemake_command(workdir, "e1_synthetic"), cwd=workdir, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (run / CHECKPOINT).is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, f"Snakemake ended (status {process.returncode}) before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    killed_at = torch.load(run / CHECKPOINT, weights_only=True)["iteration"]
    assert 0 < killed_at < TINY["e1.iterations"] and not (run / FINAL).exists()
    assert any((workdir / ".snakemake" / "locks").iterdir()), "the kill left no lock: nothing to test"

    started = time.monotonic()
    check = subprocess.run([sys.executable, "-m", "pipelines._workflow", "--config", str(REPO_ROOT / "config" / "ci.yaml"),
                            "--config", str(preset), "--unlock-stale"], cwd=workdir, env=ENV, capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    rerun = subprocess.run(snakemake_command(workdir, "e1_synthetic"), cwd=workdir, env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    return {"cfg": cfg, "workdir": workdir, "run": run, "killed_at": killed_at, "unlock": check.stderr,
            "rerun": rerun.stdout + rerun.stderr, "rerun_seconds": time.monotonic() - started}


def e1_tables(cfg: dict) -> dict[str, bytes]:
    from pipelines import e1_synthetic
    out = e1_synthetic.outputs(cfg)
    return {key: out[key].read_bytes() for key in ("table", "table_md", "figure")}


def test_training_killed_under_snakemake_resumes_to_the_same_tables(killed_and_rerun, reference_e1):
    from pipelines import e1_synthetic
    cfg, run, killed_at = killed_and_rerun["cfg"], killed_and_rerun["run"], killed_and_rerun["killed_at"]
    assert "unlocked" in killed_and_rerun["unlock"]
    relative = run.relative_to(killed_and_rerun["workdir"])  # the stage logs the path as it was given
    log = (killed_and_rerun["workdir"] / paths.log_path(load_config("ci"), "e1_synthetic")).read_text()
    assert f"resumed {relative} at iteration {killed_at}" in log, log[-3000:]
    assert e1_tables(cfg) == e1_tables(reference_e1)
    for name in cfg["e1"]["encoders"]:
        first, resumed = (torch.load(e1_synthetic.run_dir(c, name) / FINAL, weights_only=True) for c in (reference_e1, cfg))
        assert all(torch.equal(first[k], resumed[k]) for k in first), name
        curves = [np.genfromtxt(e1_synthetic.run_dir(c, name) / METRICS, delimiter=",", names=True)
                  for c in (reference_e1, cfg)]
        assert curves[0].dtype.names == curves[1].dtype.names
        for column in curves[0].dtype.names:
            if column != "seconds":
                assert np.array_equal(curves[0][column], curves[1][column], equal_nan=True), (name, column)
    assert not leftovers(killed_and_rerun["workdir"] / "results")


def test_a_deleted_intermediate_is_regenerated(killed_and_rerun):
    """Every file of a synthetic split is a declared output: one deleted reruns the synthetic stage (and
    the stages after it), and the split folder holds exactly the declared files."""
    from pipelines import synthetic
    workdir, cfg = killed_and_rerun["workdir"], killed_and_rerun["cfg"]
    train = synthetic.data_dir(cfg) / "train"
    assert {p.name for p in train.iterdir()} == set(paths.SPLIT_FILES)
    (train / "codes.npy").unlink()
    dry = subprocess.run(snakemake_command(workdir, "-n"), cwd=workdir, env=ENV,  # `make reproduce`'s target
                         capture_output=True, text=True, timeout=120)
    out = dry.stdout + dry.stderr
    assert dry.returncode == 0, out[-3000:]
    synthetic_job = out[out.index("rule synthetic:"):].split("\nrule ")[0]
    assert "reason: Missing output files: results/ci/data/synthetic/train/codes.npy" in synthetic_job, synthetic_job
    e1_job = out[out.index("rule e1_synthetic:"):].split("\nrule ")[0]
    assert "results/ci/data/synthetic/train/codes.npy" in e1_job.split("reason:")[1]  # and E1 after it


def snakemake_error(tmp_path: Path, *args: str, status: int = 2) -> str:
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--snakefile",
                             str(REPO_ROOT / "Snakefile"), "--directory", str(tmp_path), *args],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == status, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("Using workflow specific profile")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_snakemake_checks_the_config_with_the_projects_messages(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: ci\nface_model:\n  foo: 1\n")
    assert snakemake_error(tmp_path, "--configfile", str(bad)) == (  # named from the working directory
        f"mofa: error: {bad.name}: unknown key 'face_model.foo' (face_model takes cache_dir, expression_path, "
        "face_region, landmarks_path, n_expression, n_reflectance, n_shape, name, path)")
    (tmp_path / "a_file").write_text("")
    line = snakemake_error(tmp_path, "--configfile", str(REPO_ROOT / "config" / "ci.yaml"), "--config",
                           f"results_dir={tmp_path / 'a_file'}")
    assert line.startswith(f"mofa: error: {tmp_path / 'a_file'}: is a file, but the results folder")


@pytest.mark.parametrize("content, problem", [
    (None, "cannot read config (No such file or directory)"), ("folder", "cannot read config (Is a directory)"),
    (b"\xff\xfepreset: ci\n", "not a YAML text file (byte 0 is not UTF-8)"),
    ("preset: ci\nface_model: [\n", "line 3: not valid YAML"), ("- ci\n", "expected a mapping of config keys, got list")])
def test_snakemake_reading_a_configfile_it_cannot_gives_the_projects_line(tmp_path, content, problem):
    """Snakemake reads --configfile before the Snakefile runs; the workflow profile's logger plugin
    (workflow/logger_plugin) turns its traceback or its own message into the project's one line.
    Snakemake's exit status stays its own (1)."""
    config = tmp_path / "preset.yaml"
    if content == "folder":
        config.mkdir()
    elif isinstance(content, bytes):
        config.write_bytes(content)
    elif content is not None:
        config.write_text(content)
    assert snakemake_error(tmp_path, "--configfile", str(config), status=1).startswith(f"mofa: error: {config.name}: {problem}")


@pytest.mark.parametrize("word, problem", [
    ("ci", "--configfile ci: Snakemake reads files, not preset names: --configfile config/ci.yaml"),
    ("e1_synthetic", "--configfile e1_synthetic: no such config file; Snakemake reads every word after --configfile")])
def test_a_preset_name_or_a_target_after_configfile_is_one_line(tmp_path, word, problem):
    configs = [word] if word == "ci" else [str(REPO_ROOT / "config" / "ci.yaml"), word]
    assert snakemake_error(tmp_path, "--configfile", *configs, status=1).startswith(f"mofa: error: {problem}")


def test_a_target_after_config_entries_is_one_line(tmp_path):
    line = snakemake_error(tmp_path, "--configfile", str(REPO_ROOT / "config" / "ci.yaml"), "--config", "seed=1",
                           "face_model", status=1)
    assert line.startswith("mofa: error: --config: Invalid config definition") and "'face_model'" in line


def test_a_results_folder_with_a_space_reaches_the_stage_whole(tmp_path):
    """The rule's shell line quotes the log path (a results_dir with a space split it in two)."""
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "1", "--snakefile",
                             str(REPO_ROOT / "Snakefile"), "--directory", str(tmp_path), "face_model",
                             "--configfile", str(REPO_ROOT / "config" / "ci.yaml"),
                             "--config", f"results_dir={tmp_path / 'with space'}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"--log '{tmp_path / 'with space' / 'ci' / 'logs' / 'face_model.log'}'" in result.stdout + result.stderr


def test_the_logger_plugin_reads_the_configfiles_of_a_command_line():
    from snakemake_logger_plugin_mofa import configfiles
    assert configfiles(["-n", "--configfile", "a.yaml", "b.yaml", "--cores", "1"]) == ["a.yaml", "b.yaml"]
    assert configfiles(["--configfiles=a.yaml", "x", "--config", "seed=1"]) == ["a.yaml"]
    assert configfiles(["--cores", "1", "all"]) == []


@pytest.mark.parametrize("content, problem", [(None, "cannot read config (No such file or directory)"),
                                              ("preset: ci\nface_model: [\n", "line 3: not valid YAML")])
def test_make_reproduce_checks_a_config_snakemake_cannot_read(tmp_path, content, problem):
    """A missing or unparsable --configfile stops Snakemake before the workflow's own check runs, so
    `make reproduce` checks it first (pipelines/_workflow.py) and says it in one line."""
    config = tmp_path / "preset.yaml"
    if content is not None:
        config.write_text(content)
    result = subprocess.run([sys.executable, "-m", "pipelines._workflow", "--config", str(config), "--unlock-stale"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"mofa: error: {config.name}: {problem}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert '$(BIN)/python -m pipelines._workflow --config "$(CONFIG)" --unlock-stale' in (REPO_ROOT / "Makefile").read_text()


# -- a stage's own flags, and intermediates that are there but unreadable ------------------------------------

def test_a_stage_flag_that_is_bad_is_one_line(tmp_path, capsys, restore_logging):
    from pipelines import face_model
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for argv, names in ((["--set", "seed=[1,"], ("--set seed=[1,", "not valid YAML")),
                        (["--log", str(blocker / "stage.log")], (blocker / "stage.log", "is a file, not a folder"))):
        status = _stage.main(face_model.NAME, face_model.run, "test", ["--config", "ci", *argv])
        errors = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]
        assert status == 2 and len(errors) == 1, errors
        for name in names:
            assert str(name) in errors[0], (name, errors[0])


def write_synthetic_split(folder: Path, count: int = 2) -> Path:
    """A stand-in split: the manifest of `count` images and arrays of that many rows."""
    from mofa.data.synthetic import ARRAYS, FORMAT_VERSION
    folder.mkdir(parents=True)
    io.write_json(folder / "manifest.json", {"format_version": FORMAT_VERSION, "count": count})
    for name in ARRAYS:
        io.save_npy(folder / f"{name}.npy", np.zeros((count, 3), np.float32))
    return folder


@pytest.mark.parametrize("damage, problem", [
    (lambda f: (f / "manifest.json").write_text('{"count": '), "manifest.json: unreadable synthetic-split manifest (not JSON"),
    (lambda f: (f / "manifest.json").write_text("[2]"), "a JSON list, expected an object"),
    (lambda f: (f / "images.npy").write_bytes((f / "images.npy").read_bytes()[:100]), "images.npy: unreadable array"),
    (lambda f: io.save_npy(f / "codes.npy", np.zeros((1, 3))), "codes.npy: unreadable array (shape (1, 3), expected 2 rows"),
    (lambda f: (f / "vertices.npy").unlink(), "vertices.npy: array missing")])
def test_a_damaged_synthetic_split_is_one_line_naming_the_file(tmp_path, damage, problem):
    from mofa.data.synthetic import SyntheticSet
    folder = write_synthetic_split(tmp_path / "test")
    damage(folder)
    with pytest.raises(MofaError) as error:
        SyntheticSet(folder)
    assert problem in str(error.value) and "\n" not in str(error.value)


def test_a_damaged_real_face_folder_is_one_line_naming_the_file(tmp_path):
    from mofa.realdata.prepare import FORMAT_VERSION, RealFaceSet
    folder = tmp_path / "aflw2000"
    folder.mkdir()
    io.write_json(folder / "summary.json", {"format_version": FORMAT_VERSION})
    (folder / "manifest.csv").write_text("garbage\n")
    with pytest.raises(MofaError, match=r"manifest.csv: unreadable real-face manifest \(no column index"):
        RealFaceSet(folder)
    (folder / "manifest.csv").write_text("index,id,kept,split,yaw_deg\n0,a,True,eval,1.0\n3,b,True,eval,2.0\n")
    for name in (*RealFaceSet.ARRAYS, "transforms"):
        io.save_npy(folder / f"{name}.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(MofaError, match=r"images.npy: 2 rows, but manifest.csv names row 3"):
        RealFaceSet(folder)
    (folder / "summary.json").write_text("{")
    with pytest.raises(MofaError, match=r"summary.json: unreadable real-face summary \(not JSON"):
        RealFaceSet(folder)


def test_a_stage_interrupted_by_ctrl_c_says_so_in_one_line(tmp_path, capsys, restore_logging):
    def interrupted(cfg):
        with io.atomic_dir(tmp_path / "out") as partial:
            (partial / "half.npy").write_bytes(b"x")
            raise KeyboardInterrupt
    status = _stage.main("synthetic", interrupted, "test", ["--config", "ci", "--set", f"results_dir={tmp_path}"])
    errors = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]
    assert status == 130 and errors and errors[-1].endswith("stage synthetic interrupted")
    assert "Traceback" not in "".join(errors) and sorted(p.name for p in tmp_path.iterdir()) == ["ci"]


# -- cases found by trying: a command line, Snakemake's --config, folders that cannot be written, a
# damaged checkpoint, a synthetic split that cannot be drawn ------------------------------------------------

def test_a_command_line_that_argparse_refuses_is_one_line(capsys):
    """argparse prints its usage before the error: the stage and workflow commands print the error alone."""
    for argv in (["--config", "ci", "--bogus"], ["--config"], []):
        with pytest.raises(SystemExit) as exit_:
            _stage.parse_args("test", argv, prog="python -m pipelines.face_model")
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(lines) == 1, lines
        assert lines[0].startswith("python -m pipelines.face_model: error: ")
    result = subprocess.run([sys.executable, "-m", "pipelines._workflow", "--bogus"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_snakemake_config_sections_reach_the_check_and_the_stage_typed(tmp_path):
    """Snakemake reads a `--config section={key: value}` with YAML's BaseLoader (every value text); the
    workflow reads those values as YAML, as `--set` does, and a dotted key (which Snakemake refuses
    itself) is one line saying how to give a section."""
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "1", "--snakefile",
                             str(REPO_ROOT / "Snakefile"), "--directory", str(tmp_path), "face_model",
                             "--configfile", str(REPO_ROOT / "config" / "ci.yaml"),
                             "--config", "face_model={n_shape: 12, path: null}", "seed=3"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert """--set 'face_model={"n_shape": 12, "path": null}' --set seed=3""" in result.stdout + result.stderr
    assert snakemake_error(tmp_path, "--configfile", str(REPO_ROOT / "config" / "ci.yaml"), "--config",
                           "face_model={n_shape: many}").endswith("face_model.n_shape: 'many' is not of type 'integer'")
    line = snakemake_error(tmp_path, "--configfile", str(REPO_ROOT / "config" / "ci.yaml"), "--config",
                           "face_model.n_shape=12", status=1)
    assert line.startswith("mofa: error: --config: ") and "--config 'face_model={n_shape: 10}'" in line


@pytest.fixture
def read_only(tmp_path):
    """A folder on a read-only file system (a tmpfs mounted ro; root can write where chmod forbids it)."""
    if not _can_mount_tmpfs(tmp_path / "probe"):
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / "ro"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], check=True)
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_folder_is_named_as_such(read_only):
    from pipelines._workflow import check_results_folder
    with pytest.raises(MofaError, match=rf"^{read_only}: cannot write there \(read-only file system\)"):
        check_results_folder(read_only / "results")
    with pytest.raises(MofaError) as error:  # the file it was to write, not the temporary it could not create
        io.write_text(read_only / "table.csv", "a\n")
    assert str(error.value) == f"{read_only / 'table.csv'}: cannot write (Read-only file system)"


def test_an_unwritable_face_model_cache_stops_the_stage_before_the_build(tmp_path, monkeypatch, capsys, restore_logging):
    from pipelines import face_model
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("MOFA_CACHE_DIR", str(blocker))
    import mofa.facemodel
    monkeypatch.setattr(mofa.facemodel, "load_face_model", lambda fm: pytest.fail("built before the cache was checked"))
    log = tmp_path / "face_model.log"
    status, errors = run_stage(face_model, {"results_dir": str(tmp_path / "results")}, log, capsys)
    line = assert_failed_in_one_line(status, errors, log, blocker, "is a file, not a folder", "MOFA_CACHE_DIR")
    assert "face-model cache" in line


@pytest.fixture(scope="module")
def trained_run(small_face_model, tmp_path_factory):
    """A finished two-iteration run of a tiny training (its checkpoint kept) and what resumes it."""
    from mofa.data.synthetic import CodeDistribution, SyntheticSet, generate_split
    from mofa.decoder import Decoder, PinholeCamera
    from mofa.encoders import build_encoder
    from mofa.losses import LossWeights
    from mofa.training.trainer import TrainSettings, train

    camera = PinholeCamera(image_size=64, focal_length_px=200.0)
    root = tmp_path_factory.mktemp("syn")
    generate_split(root, "train", 2, small_face_model, camera, seed=0, dist=CodeDistribution(), progress=False,
                   workers=1)
    data, decoder = SyntheticSet(root / "train"), Decoder(small_face_model, camera)
    settings = TrainSettings(iterations=2, batch_size=2, checkpoint_every=1, input_size=64, progress=False)

    def resume(folder: Path):
        encoder = build_encoder("alexnet", decoder.layout, rotation_bound_rad=1.0, seed=0)
        return train(folder, encoder, decoder, data, settings, LossWeights())

    folder = tmp_path_factory.mktemp("run")
    resume(folder)
    return folder, resume


@pytest.mark.parametrize("damage, problem", [
    (lambda p: p.write_bytes(p.read_bytes()[:300]), "unreadable checkpoint"),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), "unreadable checkpoint"),
    (lambda p: torch.save([1, 2], p), "not a trainer checkpoint (a list)"),
    (lambda p: torch.save({**torch.load(p, weights_only=True), "encoder": {"head.weight": torch.zeros(1)}}, p),
     "not a checkpoint of this run (RuntimeError"),
    (lambda p: torch.save({k: v for k, v in torch.load(p, weights_only=True).items() if k != "optimiser"}, p),
     "not a checkpoint of this run (KeyError: 'optimiser')")])
def test_a_damaged_checkpoint_is_one_line_naming_it(trained_run, tmp_path, damage, problem):
    import shutil
    folder, resume = trained_run
    run = tmp_path / "run"
    shutil.copytree(folder, run)
    damage(run / CHECKPOINT)
    with pytest.raises(MofaError) as error:
        resume(run)
    assert str(error.value).startswith(f"{run / CHECKPOINT}: {problem}") and "\n" not in str(error.value)
    assert str(error.value).endswith("delete it to start over")


def test_a_damaged_run_key_starts_the_run_over(tmp_path):
    from mofa.training.runs import RUN_KEY, prepare_run_dir
    (tmp_path / RUN_KEY).write_bytes(b"\xff\xfe{")
    (tmp_path / CHECKPOINT).write_bytes(b"old")
    prepare_run_dir(tmp_path, {"config": "abc"})
    assert not (tmp_path / CHECKPOINT).exists() and json.loads((tmp_path / RUN_KEY).read_text()) == {"config": "abc"}


def test_a_synthetic_split_that_cannot_be_drawn_is_said_before_any_work(small_face_model, tmp_path, monkeypatch):
    import dataclasses
    from mofa.data import synthetic
    from mofa.decoder import PinholeCamera
    camera = PinholeCamera(image_size=32, focal_length_px=100.0)
    args = dict(model=small_face_model, camera=camera, seed=0, dist=synthetic.CodeDistribution(), progress=False)
    no_kind = dict(procedural=0, noise=0, colour_field=0, folder=1.0)
    with pytest.raises(MofaError, match=r"^synthetic\.background_mix: no background kind .*MOFA_BACKGROUND_DIR"):
        synthetic.generate_split(tmp_path, "train", 2, background_mix=no_kind, **args)
    model = dataclasses.replace(small_face_model, expression_examples=np.eye(2, 3, dtype=np.float32))
    with pytest.raises(MofaError, match=r"^synthetic\.distribution\.blendshapes: at most 3 active blendshapes, "
                                        r"but face model small-sphere has 2$"):
        synthetic.generate_split(tmp_path, "train", 2, **{**args, "model": model})
    assert list(tmp_path.iterdir()) == []  # no partial split
    # a helper process's MofaError reaches the stage as its one line, not as a traceback
    import queue

    def bad_photo(*args, **kwargs):
        raise MofaError("bad photo")
    monkeypatch.setattr(synthetic, "_SampleWriter", bad_photo)
    results = queue.Queue()
    synthetic._helper(None, None, 4, 1, results)
    got = results.get_nowait()
    assert isinstance(got, MofaError) and str(got) == "bad photo"


def test_a_stage_terminated_by_sigterm_removes_its_partial_folder(tmp_path, capsys, restore_logging):
    """A workflow engine or cluster cancels a job with SIGTERM, whose default ends Python with no
    clean-up: a stage treats it as Ctrl-C (one line, status 143) and leaves nothing partial."""
    def terminated(cfg):
        with io.atomic_dir(tmp_path / "out") as partial:
            (partial / "half.npy").write_bytes(b"x")
            with io.atomic_open(tmp_path / "table.csv") as fh:
                fh.write("a\n")
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler runs here
    before = signal.getsignal(signal.SIGTERM)
    status = _stage.main("synthetic", terminated, "test", ["--config", "ci", "--set", f"results_dir={tmp_path}"])
    errors = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]
    assert status == 143 and errors and errors[-1].endswith("stage synthetic terminated (SIGTERM)"), errors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ci"]
    assert signal.getsignal(signal.SIGTERM) == before  # put back when the stage ends


def test_a_damaged_data_manifest_is_one_line_naming_it(tmp_path):
    from pipelines.tables import manifest_hash
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"count": ')
    with pytest.raises(MofaError, match=r"manifest\.json: unreadable data manifest \(not JSON"):
        manifest_hash(manifest)
    manifest.write_text("[1]")
    with pytest.raises(MofaError, match=r"manifest\.json: unreadable data manifest \(a JSON list"):
        manifest_hash(manifest)
