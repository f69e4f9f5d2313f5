"""The workflow on a SLURM cluster: the `ci` preset run through snakemake-executor-plugin-slurm with the
repository's profile (profiles/slurm) on a one-node cluster started here (tests/slurm_cluster.py) gives
the tables of a local run of the same preset.

Two runs of the ci preset take longer than the rest of the suite, so `make test` leaves this test out
(marker `cluster`) and `.ci/run` runs it as its own step: `make test-cluster`."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mofa.config import CONFIG_DIR, REPO_ROOT
from pipelines.stages import STAGES as DECLARED

from compare_results import differences
from slurm_cluster import PARTITION, SlurmCluster
from test_workflow import MULTICORE_STAGES

pytestmark = pytest.mark.cluster

STAGES = sorted(DECLARED)
RUN_TIMEOUT_S = 45 * 60


def ci_config(tmp: Path, name: str, cache: Path) -> Path:
    """The ci preset writing under tmp/<name>/ (results_dir), all runs sharing one face-model cache
    (face_model.cache_dir is part of the config hash that every table is stamped with)."""
    cfg = yaml.safe_load((CONFIG_DIR / "ci.yaml").read_text())
    cfg["results_dir"] = str(tmp / name / "results")
    cfg["face_model"]["cache_dir"] = str(cache)
    path = tmp / name / "ci.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def snakemake(*args: str, log: Path, env: dict | None = None) -> float:
    """Run Snakemake from the repository root, its output in `log`; its wall time in seconds."""
    start = time.perf_counter()
    with open(log, "w") as out:
        result = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=REPO_ROOT, stdout=out,
                                stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT_S, env=env)
    seconds = time.perf_counter() - start
    assert result.returncode == 0, f"snakemake {' '.join(args)} failed:\n" + "\n".join(
        log.read_text().splitlines()[-60:])
    return seconds


@pytest.fixture(scope="module")
def cluster():
    """A one-node cluster for this module; every daemon it started is stopped by process id afterwards,
    also when the test fails, is interrupted (Ctrl-C) or pytest is sent SIGTERM."""
    def terminate(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, terminate)
    slurm = SlurmCluster()
    try:
        slurm.start()
        yield slurm
    finally:
        slurm.stop()
        signal.signal(signal.SIGTERM, previous)
        assert not slurm.alive(), f"SLURM processes still running after stop: {slurm.alive()}"


def test_ci_preset_on_slurm_gives_the_local_tables(cluster, tmp_path):
    print(f"\ncluster start-up (munged, slurmctld, slurmd; node idle): {cluster.startup_s:.1f} s")
    cache = tmp_path / "cache"
    threads = str(cluster.cpus)
    slurm_cfg, local_cfg = ci_config(tmp_path, "slurm", cache), ci_config(tmp_path, "local", cache)
    slurm_s = snakemake(
        "--profile", "profiles/slurm", "--configfile", str(slurm_cfg),
        # This cluster has no accounting daemon: job states come from squeue (MinJobAge keeps finished
        # jobs an hour).
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "1", "--latency-wait", "5",
        "--slurm-logdir", str(tmp_path / "slurm-logs"), "--slurm-keep-successful-logs",
        # One small node: each job's cores and memory capped to it (the profile's values are a cluster's).
        "--max-threads", threads, "--resources", f"mem_mb={cluster.memory_mb}",
        log=tmp_path / "slurm.log", env=cluster.env)
    print(f"ci preset through SLURM: {slurm_s:.0f} s")

    # Every stage ran as a SLURM job and completed, the torch stages on every core of the node.
    listed = subprocess.run(["squeue", "-h", "--states=all", f"--partition={PARTITION}", "-o", "%k|%T|%C"],
                            capture_output=True, text=True, timeout=30, env=cluster.env)
    assert listed.returncode == 0, listed.stderr
    jobs = {comment: (state, int(cpus)) for comment, state, cpus in (line.split("|") for line in listed.stdout.split())}
    assert jobs == {f"rule_{stage}": ("COMPLETED", cluster.cpus if stage in MULTICORE_STAGES else 1)
                    for stage in STAGES}, (jobs, cluster.log_tail("slurmctld"))

    local_s = snakemake("--cores", threads, "--configfile", str(local_cfg), log=tmp_path / "local.log")
    print(f"ci preset locally (--cores {threads}): {local_s:.0f} s")

    local, slurm = (tmp_path / name / "results" / "ci" / "tables" for name in ("local", "slurm"))
    assert sorted(p.name for p in local.iterdir()), "the local run wrote no tables"
    assert not differences(local, slurm, str(tmp_path / "local" / "results"), str(tmp_path / "slurm" / "results"))
