"""The workflow on a SLURM cluster: the `ci` preset run through snakemake-executor-plugin-slurm with the
repository's profile (profiles/slurm) on a one-node cluster started here (tests/slurm_cluster.py) gives
the tables of a local run of the same preset.

Two runs of the ci preset take longer than the rest of the suite, so `make test` leaves this test out
(marker `cluster`) and `.ci/run` runs it as its own step: `make test-cluster`."""
from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mofa.config import CONFIG_DIR, REPO_ROOT
from pipelines.stages import STAGES as DECLARED

from slurm_cluster import PARTITION, SlurmCluster
from test_workflow import MULTICORE_STAGES

pytestmark = pytest.mark.cluster

# Table columns that hold measured times (and what is computed from them, or measured with them):
# they differ between any two runs. Every other cell, and every file not named here, must be equal
# byte for byte, once each run's results_dir is written as <results_dir> (E3's init column names the E1
# weights it started from by path).
# The machine's load around a timing (mofa.machine_load.LoadMonitor.summary).
LOAD_COLUMNS = ("load_1min_before", "load_1min_after", "other_cpu_before", "other_cpu_during", "other_cpu_after",
                "machine_idle")
# Tables whose title states measured figures (E7's peak GFLOP/s; E4's and E7's load note): the title line
# is compared without them, as its provenance must still agree.
TIMED_TITLES = {"e4_baselines", "e7_speed"}
TIMING_COLUMNS = {
    "e1_synthetic_curves": {"seconds"},
    "e2_real_curves": {"seconds"},
    "e3_variants": {"seconds_per_iteration"},
    "e4_baselines": {"ms_per_image", "speedup_over_gauss_newton", "ms_per_image_one_at_a_time_first_2", *LOAD_COLUMNS},
    "e5_conv_autoencoder": {"training_seconds"},
    "e6_learned_decoder": {"training_seconds"},
    "e7_speed": {"ms_per_image", "step_ms", "images_per_s", "decoder_loss_ms", "decoder_loss_share", "encoder_gflops",
                 "peak_fraction", *LOAD_COLUMNS},
    "runtime": {"wall_time", "wall_s", "max_rss_mb", "cpu_s"},  # Snakemake's benchmark files
}
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


PROVENANCE = "; preset "  # where a table's title ends (mofa.results.PROVENANCE_START)


def located(path: Path, results_dir: str) -> str:
    """The file's text with `results_dir` written as <results_dir>."""
    return path.read_text().replace(results_dir, "<results_dir>") if results_dir else path.read_text()


def table_lines(path: Path, results_dir: str) -> list[list[str] | str]:
    """A table file as lines: a CSV row or a Markdown table row as its list of cells (stripped of the
    padding Markdown adds, which follows the widest cell), any other line as it is."""
    text = located(path, results_dir)
    if path.suffix == ".csv":
        lines = [line if line.startswith("#") else next(csv.reader([line])) for line in text.splitlines()]
    else:
        lines = [[cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else line
                 for line in text.splitlines()]
    if path.stem in TIMED_TITLES:  # keep the provenance (after the title), drop the title's measured figures
        lines = [line.split(PROVENANCE, 1)[-1] if isinstance(line, str) and PROVENANCE in line else line
                 for line in lines if not (isinstance(line, str) and line.startswith("**"))]  # Markdown title
    return lines


def without_columns(lines: list, columns: set[str], path: Path) -> list:
    """`lines` without the table columns named `columns`, each of which must be in the header."""
    rows = [line for line in lines if isinstance(line, list)]
    header = rows[0]
    assert columns <= set(header), f"{path}: no column {sorted(columns - set(header))} (TIMING_COLUMNS is stale)"
    keep = [i for i, name in enumerate(header) if name not in columns]
    return [[line[i] for i in keep] if isinstance(line, list) else line for line in lines]


def differences(local: Path, slurm: Path, local_dir: str = "", slurm_dir: str = "") -> list[str]:
    """The tables that differ between two tables folders, timing columns and results dirs aside."""
    names = sorted(p.name for p in local.iterdir())
    found = []
    if names != sorted(p.name for p in slurm.iterdir()):
        found.append(f"table files differ: local {names}, SLURM {sorted(p.name for p in slurm.iterdir())}")
    for name in names:
        a, b = local / name, slurm / name
        if not b.is_file():
            continue
        timing = TIMING_COLUMNS.get(a.stem)
        if timing is None:
            same = located(a, local_dir) == located(b, slurm_dir)
        else:
            same = (without_columns(table_lines(a, local_dir), timing, a)
                    == without_columns(table_lines(b, slurm_dir), timing, b))
        if not same:
            found.append(f"{name} differs (diff {a} {b})")
    return found


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


def test_table_comparison_sees_a_changed_cell_and_ignores_timings(tmp_path):
    """The comparison itself: a different timing cell passes, a different result cell does not."""
    local, slurm = tmp_path / "local", tmp_path / "slurm"
    local.mkdir(), slurm.mkdir()
    header = "# provenance\nencoder,iteration,seconds,landmark_error_mean\n"
    (local / "e2_real_curves.csv").write_text(header + "AlexNet,0,0,10.93\nAlexNet,2,14.47,10.89\n")
    (slurm / "e2_real_curves.csv").write_text(header + "AlexNet,0,0,10.93\nAlexNet,2,9.01,10.89\n")
    (local / "e2_real_curves.md").write_text("| encoder | seconds | nme |\n|:--|--:|--:|\n| AlexNet |  14.47 | 0.1 |\n")
    (slurm / "e2_real_curves.md").write_text("| encoder | seconds | nme |\n|:--|--:|--:|\n| AlexNet | 9.1 | 0.1 |\n")
    assert differences(local, slurm) == []
    (slurm / "e2_real_curves.csv").write_text(header + "AlexNet,0,0,10.93\nAlexNet,2,9.01,10.88\n")
    assert differences(local, slurm) == [f"e2_real_curves.csv differs (diff {local / 'e2_real_curves.csv'} "
                                         f"{slurm / 'e2_real_curves.csv'})"]
    (local / "e1_synthetic.csv").write_text("a,b\n1,2\n")
    (slurm / "e1_synthetic.csv").write_text("a,b\n1,2.0\n")
    assert len(differences(local, slurm)) == 2
    # A path under each run's own results_dir counts as the same path.
    (local / "e1_synthetic.csv").write_text("a,b\n1,/x/local/runs/e1.pt\n")
    (slurm / "e1_synthetic.csv").write_text("a,b\n1,/x/slurm/runs/e1.pt\n")
    assert len(differences(local, slurm, "/x/local", "/x/slurm")) == 1
    assert len(differences(local, slurm)) == 2
