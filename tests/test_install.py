"""A non-editable install works: `pip install .` ships the presets and the schema with the package, and
the CLI and a stage run from another directory."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_plain_install_runs_model_info_and_a_ci_stage_from_elsewhere(ict_dir, tmp_path):
    target = tmp_path / "site"
    # Built from a copy of the tracked files, so that setuptools' build/ folder (which keeps files deleted
    # from the source) neither lands in the checkout nor feeds the install.
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    source = tmp_path / "source"
    for name in tracked:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        if (REPO / name).is_symlink():
            (source / name).symlink_to(os.readlink(REPO / name))
        elif (REPO / name).is_file():
            shutil.copy2(REPO / name, source / name)
    # --no-deps: the dependencies are this environment's; --target: a copy, not a link to the checkout.
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                            "--target", str(target), str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    assert sorted(p.name for p in (target / "mofa" / "presets").iterdir()) == ["ci.yaml", "default.yaml", "paper.yaml",
                                                                              "schema.yaml"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "MOFA_ICT_DIR": str(ict_dir),
           "MOFA_CACHE_DIR": str(tmp_path / "cache")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=600)

    where = run("-c", "import mofa, pipelines; print(mofa.__file__); print(pipelines.__file__)")
    assert where.returncode == 0 and all(line.startswith(str(target)) for line in where.stdout.split()), where
    info = run("-m", "mofa.cli", "model-info", "ict")
    assert info.returncode == 0 and "ICT-FaceKit" in info.stdout, info.stderr[-2000:]
    stage = run("-m", "pipelines.face_model", "--config", "ci", "--set", f'results_dir="{tmp_path / "results"}"')
    assert stage.returncode == 0, stage.stderr[-2000:]
    assert (tmp_path / "results" / "ci" / "metrics" / "face_model.json").is_file()
    assert list(elsewhere.iterdir()) == []  # nothing written where the commands ran
