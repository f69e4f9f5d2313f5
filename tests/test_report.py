"""The report stage (pipelines/report.py), the main table (mofa/results.py) and `mofa report`, on a small
results folder made here: result tables in the stages' formats, figures, one Snakemake benchmark file.
The report is also opened in headless Chromium (Selenium + chromedriver, installed by `make setup`)."""
from __future__ import annotations

import json
from pathlib import Path
import shutil
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from mofa.config import REPO_ROOT, load_config  # noqa: E402
from mofa.figures.curves import save_figure  # noqa: E402
from mofa.results import main_table, read_table  # noqa: E402
from pipelines import paths, real_data, report, stages, synthetic  # noqa: E402
from pipelines.tables import figure_metadata, write_table  # noqa: E402

E1 = pd.DataFrame({"metric": ["geometric_error", "photometric_error", "landmark_error"], "unit": ["mm", "rgb", "px"],
                   "ours_start": [16.0, 0.30, 9.0], "ours_end": [12.5, 0.21, 7.5], "paper_start": [21.6, 0.33, 31.6],
                   "paper_end": [4.5, 0.05, 3.9], "iterations": [12] * 3, "encoder": ["alexnet"] * 3})
E3 = pd.DataFrame({"variant": ["AlexNet without landmarks", "AlexNet with landmarks"], "encoder": ["alexnet"] * 2,
                   "landmark_error": [20.0, 15.0], "paper_landmark_error": [5.3, 3.7],
                   "photometric_error": [0.3, 0.31], "paper_photometric_error": [0.075, 0.078]})
E4 = pd.DataFrame({"dataset": ["synthetic", "real"], "method": ["Gauss-Newton with landmarks"] * 2,
                   "geometric_error_mean": [5.0, float("nan")], "photometric_error_mean": [0.1, 0.2],
                   "landmark_error_mean": [3.0, 6.0], "ms_per_image": [900.0, 950.0], "paper_ms_per_image": [500.0, 500.0]})
FIGURES = ("e8_alexnet_land", "extra", "e3_variants", "face_model", "e1_synthetic_curves",
           "e1_synthetic_spread")  # 'extra': no stage's; the spread figure goes beside E1's table


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """The ci config writing under a temporary folder that holds a small, finished pipeline's results."""
    base = tmp_path_factory.mktemp("report")
    cfg = load_config("ci", {"results_dir": str(base / "results")})
    for path in synthetic.manifests(cfg).values():
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"count": 4, "seconds": 1.0}))
    for path in real_data.manifests(cfg).values():
        path.parent.mkdir(parents=True)
        path.write_text("index,id,kept\n0,a,True\n")
    tables = report.results_dir(cfg) / "tables"
    write_table(E1, tables / "e1_synthetic.csv", tables / "e1_synthetic.md", cfg, "E1 test table", stage="e1_synthetic")
    write_table(E3, tables / "e3_variants.csv", tables / "e3_variants.md", cfg, "E3; test table", stage="e2_e3_real")
    write_table(E4, tables / "e4_baselines.csv", tables / "e4_baselines.md", cfg, "E4 test table", stage="e4_baselines")
    pd.DataFrame({"image": range(70), "error": 1.0}).to_csv(tables / "e4_per_image.csv", index=False)  # no title line
    for k, name in enumerate(FIGURES):
        fig, ax = plt.subplots(figsize=(2, 1.5))
        ax.plot([0, 1], [k, 0])
        save_figure(fig, report.results_dir(cfg) / "figures" / f"{name}.png", metadata=figure_metadata(cfg, "report"))
    bench = paths.benchmark_path(cfg, "face_model")
    bench.parent.mkdir(parents=True)
    bench.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                     "62.5\t0:01:02\t600.0\t900.0\t500.0\t550.0\t1.0\t2.0\t90.0\t55.0\n")
    metrics = report.run(cfg)
    return cfg, metrics


def test_read_table_splits_title_and_provenance(results):
    cfg, _ = results
    table = read_table(report.results_dir(cfg) / "tables" / "e3_variants.csv")
    assert table.title == "E3; test table"
    assert table.provenance.startswith("preset ci, config ") and "data synthetic/train=" in table.provenance
    assert table.frame["paper_landmark_error"].tolist() == [5.3, 3.7]
    plain = read_table(report.results_dir(cfg) / "tables" / "e4_per_image.csv")
    assert (plain.title, plain.provenance, len(plain.frame)) == ("e4_per_image", "", 70)


def test_main_table_has_one_row_per_method_beside_the_papers(results):
    cfg, _ = results
    main = main_table(report.results_dir(cfg) / "tables")
    assert main["experiment"].tolist() == ["E1", "E3", "E3", "E4", "E4"]
    assert main["method"].tolist()[:3] == ["MoFA AlexNet without landmarks", "MoFA AlexNet without landmarks",
                                           "MoFA AlexNet with landmarks"]
    e1 = main.iloc[0]
    assert (e1.geometric_error_mm, e1.paper_geometric_error_mm, e1.landmark_error_px, e1.paper_landmark_error_px) == \
        (12.5, 4.5, 7.5, 3.9)
    assert main["paper_landmark_error_px"].tolist()[1:3] == [5.3, 3.7]
    assert main["ms_per_image"].tolist()[3:] == [900.0, 950.0] and main["paper_ms_per_image"].iloc[3] == 500.0


def test_runtime_table_reads_snakemake_benchmarks_and_says_what_was_not_measured(results):
    cfg, metrics = results
    runtime = pd.read_csv(report.outputs(cfg)["runtime"], comment="#")
    assert runtime["stage"].tolist()[:-1] == report.stages()
    assert report.stages()[:3] == ["face_model", "synthetic", "e1_synthetic"]
    face = runtime.iloc[0]
    assert (face.wall_time, face.wall_s, face.max_rss_mb, face.cpu_s) == ("0:01:02", 62.5, 600.0, 55.0)
    assert (runtime["wall_time"].iloc[1:-1] == report.NOT_MEASURED).all()
    total = runtime.iloc[-1]
    assert total.stage == f"total ({len(report.stages()) - 1} not measured)" and total.wall_s == 62.5
    assert metrics == {"tables": 4, "figures": len(FIGURES), "stages_measured": 1, "wall_s_total": 62.5,
                       "claims_holding": 1, "claims": 8}  # E1 only: E3's test table has no landmark_loss column


def test_report_collects_every_table_and_figure_in_stage_order_with_the_run_metadata(results):
    cfg, _ = results
    page = report.outputs(cfg)["html"].read_text()
    markdown = report.outputs(cfg)["markdown"].read_text()
    for text in (page, markdown):
        positions = [text.index(f"figures/{name}.png") for name in
                     ("face_model", "e1_synthetic_curves", "e3_variants", "e8_alexnet_land", "extra")]
        assert positions == sorted(positions)  # the stages' order, then what no stage declares
        positions = [text.index(title) for title in ("E1 test table", "E3; test table", "E4 test table", "e4_per_image")]
        assert positions == sorted(positions)
        assert "first 60 of 70 rows" in text
        for key in ("git commit", "config hash", "data manifest synthetic/train", "data manifest real/aflw2000",
                    "version torch", "version numpy", "version open3d", "version opencv", "version mediapipe",
                    "version snakemake", "version dvc", "version python", "device"):
            assert key in text, key
        assert text.count("preset ci, config ") >= 3 + len(FIGURES)  # every table's and figure's provenance
        assert "21.6" in text and "TitanX" in text  # the paper's numbers appendix
        # the scorecard opens the report; E1's spread figure sits beside its table, not among the figures
        assert text.index("Scorecard") < text.index("Main results") < text.index("E1 test table")
        assert "training on synthetic data lowers" in text and "not measured at this scale" in text
        spread = text.index("figures/e1_synthetic_spread.png")
        assert text.index("E1 test table") < spread < text.index("E3; test table")
        assert text.count("figures/e1_synthetic_spread.png") == 1


def test_mofa_report_prints_the_main_table(results):
    cfg, _ = results
    result = subprocess.run([sys.executable, "-m", "mofa.cli", "report", "--preset", "ci"], capture_output=True,
                            text=True, timeout=120, cwd=report.results_dir(cfg).parent.parent)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "the paper's findings here" in lines[0]
    assert lines[1].strip() == "E1 training on synthetic data lowers the geometric, photometric and landmark errors: HOLDS"
    assert "ours:  alexnet: 16 -> 12.5, 0.3 -> 0.21, 9 -> 7.5" in result.stdout
    assert sum("NOT MEASURED AT THIS SCALE" in line for line in lines) == 7
    lines = lines[lines.index("ours beside the paper's (paper_*)"):]
    assert "paper_landmark_error_px" in lines[1] and "MoFA AlexNet with landmarks" in result.stdout
    assert len([line for line in lines if line.split()[:1] in (["E1"], ["E3"], ["E4"])]) == 5
    assert lines[-1].startswith("full report: ")


def test_mofa_report_without_results_is_one_line(tmp_path):
    # a results_dir of its own: this checkout's results/ci may hold a real run
    config = tmp_path / "ci_empty.yaml"
    config.write_text((REPO_ROOT / "config" / "ci.yaml").read_text() + f"\nresults_dir: {tmp_path / 'results'}\n")
    result = subprocess.run([sys.executable, "-m", "mofa.cli", "report", "--preset", str(config)], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and f"{tmp_path}/results/ci/tables: none of e1_synthetic.csv" in result.stderr


# Headless Chromium without network, extensions or first-run work: only the page.
CHROMIUM_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
                 "--disable-sync", "--disable-extensions", "--no-first-run", "--no-default-browser-check",
                 "--metrics-recording-only", "--mute-audio", "--allow-file-access-from-files")


def test_report_renders_in_headless_chromium(results, tmp_path):
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.fail("chromium and chromedriver are not installed: `make setup` installs the Debian packages "
                    "chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    cfg, _ = results
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (*CHROMIUM_ARGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        driver.get(report.outputs(cfg)["html"].resolve().as_uri())
        assert driver.title == "MoFA-Bench report: ci preset"
        tables = driver.find_elements(By.TAG_NAME, "table")
        assert len(tables) == 1 + 1 + 4 + 3  # scorecard, main, the four result tables, runtime, run, the paper's numbers
        assert len(driver.find_elements(By.CSS_SELECTOR, "table.scorecard tbody tr")) == 8
        for table in tables:
            assert len(table.find_elements(By.CSS_SELECTOR, "tbody tr")) > 0
        main_rows = driver.find_elements(By.CSS_SELECTOR, "table.main-table tbody tr")
        assert len(main_rows) == 5
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
        assert len(images) == len(FIGURES)
        assert all(complete and width > 0 for _, complete, width in images), images
    finally:
        driver.quit()


def test_report_needs_declared_stages_that_have_an_entry_point():
    assert set(report.STAGE.needs) <= set(stages.STAGES) - {"report"}
    assert set(stages.STAGES) <= {p.stem for p in (REPO_ROOT / "pipelines").glob("*.py")}


def test_snakemake_report_builds(tmp_path):
    """Snakemake's own report of the ci preset (its rules, and whatever results/ci holds) from the venv."""
    out = tmp_path / "snakemake-report.html"
    result = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "config/ci.yaml",
                             "--report", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Report created" in result.stdout + result.stderr and out.stat().st_size > 100_000


def test_dvc_finds_the_declared_metrics_and_plots():
    """`dvc metrics show` and `dvc plots show` list every metrics file and curve dvc.yaml declares for the
    preset in params.yaml (a file not written yet is listed with an error)."""
    import yaml
    from mofa.config import read_yaml

    preset = read_yaml(REPO_ROOT / "params.yaml")["preset"]
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"].values()

    def declared(kind: str) -> set[str]:
        return {(next(iter(e)) if isinstance(e, dict) else e).replace("${preset}", preset)
                for stage in stages for e in stage.get(kind, [])}

    dvc = str(Path(sys.executable).with_name("dvc"))
    shown = {}
    for kind in ("metrics", "plots"):
        result = subprocess.run([dvc, kind, "show", "--json"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        shown[kind] = json.loads(result.stdout)
    assert set(shown["metrics"][""]["data"]) == declared("metrics")
    assert set(shown["plots"]["data"]) | {e["name"] for e in shown["plots"].get("errors", [])} == declared("plots")
    assert declared("plots") >= {f"results/{preset}/tables/e1_synthetic_curves.csv"}


def test_spread_plot_is_the_same_every_run_and_leaves_numpys_generator_alone(tmp_path):
    """The strip plot's jitter is seeded: two runs give the same PNG bytes (tests/test_robustness.py's
    promise for every figure), and NumPy's global generator goes on as if nothing had drawn from it."""
    import numpy as np

    from mofa.figures.spread import plot_spread

    frame = pd.DataFrame({"method": ["a"] * 20 + ["b"] * 20, "dataset": (["synthetic"] * 10 + ["real"] * 10) * 2,
                          "error": np.linspace(0, 1, 40), "nme": [float("nan")] * 10 + list(np.linspace(0, 1, 10)) * 3})
    np.random.seed(3)
    expected = np.random.uniform()
    np.random.seed(3)
    first = plot_spread(frame, "method", [("error", "error"), ("nme", "NME")], tmp_path / "a.png", "t", facet="dataset")
    assert np.random.uniform() == expected
    second = plot_spread(frame, "method", [("error", "error"), ("nme", "NME")], tmp_path / "b.png", "t", facet="dataset")
    assert first.read_bytes() == second.read_bytes() and first.stat().st_size > 5_000
    with pytest.raises(ValueError, match="no finite value"):
        plot_spread(frame.assign(error=float("nan"), nme=float("nan")), "method", [("error", "e"), ("nme", "n")],
                    tmp_path / "c.png", "t")
