"""The two workflow engines run the stages declared in pipelines/stages.py: Snakemake's rules are made
from the declarations, dvc.yaml is written from them (and must be current), and each declaration holds
what its stage imports and writes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mofa.config import CONFIG_DIR, REPO_ROOT, load_config, presets, read_yaml
from mofa.errors import MofaError
from pipelines import _stage, dvc_yaml
from pipelines.stages import STAGES


def dvc_stages() -> dict:
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def entries(items: list) -> dict:
    """DVC lists entries either as plain strings or as {path: options}."""
    out = {}
    for item in items:
        out.update(item if isinstance(item, dict) else {item: {}})
    return out


def snakemake(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)


def test_the_declarations_import_neither_torch_nor_a_stage_module():
    """Snakemake builds its DAG from pipelines/stages.py, and the dvc.yaml writer reads it: neither may pay
    for torch or run a stage module's imports."""
    probe = ("import sys, pipelines.stages, pipelines.dvc_yaml; print(json.dumps(sorted(m for m in sys.modules if "
             "m.split('.')[0] in ('torch', 'numpy', 'pandas') or m.startswith('pipelines.'))))")
    result = subprocess.run([sys.executable, "-c", f"import json; {probe}"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["pipelines.dvc_yaml", "pipelines.paths", "pipelines.stages"]


def test_snakemake_has_a_rule_per_declared_stage():
    result = snakemake("--list-rules")
    assert result.returncode == 0, result.stderr
    listed = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " (" in line)
    assert {line.split()[0] for line in result.stdout.splitlines() if line.strip()} == {"all", *STAGES}
    assert listed == {name: f"({stage.description})" for name, stage in STAGES.items()}


def test_dvc_yaml_is_current():
    assert (REPO_ROOT / "dvc.yaml").read_text() == dvc_yaml.render(), \
        "dvc.yaml differs from what pipelines/stages.py declares: run `python -m pipelines.dvc_yaml` (make dvc.yaml)"
    assert list(dvc_stages()) == list(STAGES)


@pytest.mark.parametrize("name", presets())
def test_dvc_yaml_serves_every_preset(name):
    """dvc.yaml is written once for every preset (results/${preset}/): each stage's outputs in it are
    that preset's, and the config sections it tracks are written in the preset file, which DVC reads."""
    raw = read_yaml(CONFIG_DIR / f"{name}.yaml")
    for stage, spec in dvc_stages().items():
        declared = {path.replace("${preset}", name) for path in
                    [*entries(spec.get("outs", [])), *entries(spec.get("metrics", [])), *entries(spec.get("plots", []))]}
        assert declared == {str(p) for p in STAGES[stage].dvc_outputs(load_config(name)).values()}, stage
        assert set(STAGES[stage].params) <= set(raw), f"config/{name}.yaml lacks {set(STAGES[stage].params) - set(raw)}"


# Run in a fresh interpreter: imports one stage module and prints the project files it imported.
IMPORTED = """
import json, sys, importlib
from pathlib import Path
from mofa.config import REPO_ROOT
importlib.import_module(f"pipelines.{sys.argv[1]}")
files = {Path(m.__file__).resolve() for m in list(sys.modules.values()) if getattr(m, "__file__", None)}
print(json.dumps(sorted(f.relative_to(REPO_ROOT).as_posix() for f in files if f.is_relative_to(REPO_ROOT)
                        and f.parts[len(REPO_ROOT.parts)] in ("mofa", "pipelines", "baselines"))))
"""


@pytest.mark.parametrize("stage", [name for name in STAGES if name != "report"])  # report: all of pipelines/
def test_a_stage_declares_the_pipelines_and_baselines_code_it_imports(stage):
    """Its sources (what Snakemake and DVC rerun it for, and a training run's code hash) hold every module
    of pipelines/ and baselines/ that its entry point imports (pipelines/__init__.py is a docstring)."""
    result = subprocess.run([sys.executable, "-c", IMPORTED, stage], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    sources = STAGES[stage].sources
    undeclared = [f for f in json.loads(result.stdout) if not f.startswith("mofa/") and f != "pipelines/__init__.py"
                  and not any(f == s or f.startswith(s + "/") for s in sources)]
    assert not undeclared, f"pipelines/stages.py: {stage}'s sources miss {undeclared}"


def test_params_yaml_names_a_preset():
    assert read_yaml(REPO_ROOT / "params.yaml")["preset"] in presets()


# Stages that train or render with torch: Snakemake gives a rule without `threads` one core and sets
# OMP_NUM_THREADS=1 for it, which made e2_e3_real run on one of two cores (1,119 s wall, 1,088 s CPU).
MULTICORE_STAGES = ("synthetic", "e1_synthetic", "e2_e3_real", "e4_baselines", "e5_conv_autoencoder",
                    "e6_learned_decoder", "e7_speed", "e8_qualitative")
# Stages that run torch on the config's device (select_device): on a cluster they ask for a GPU when it is cuda.
DEVICE_STAGES = ("e1_synthetic", "e2_e3_real", "e4_baselines", "e5_conv_autoencoder", "e6_learned_decoder",
                 "e7_speed", "e8_qualitative", "report")


def dry_run_jobs(*args: str) -> dict[str, tuple[int, dict[str, str]]]:
    """{rule: (threads, resources)} of a forced dry run of the ci preset."""
    result = snakemake("-n", "--forceall", "--configfile", "config/ci.yaml", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs, rule = {}, None
    for line in result.stdout.splitlines():
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
            jobs[rule] = (1, {})
        elif rule and line.strip().startswith("threads:"):
            jobs[rule] = (int(line.split(":")[1]), jobs[rule][1])
        elif rule and line.strip().startswith("resources:"):
            pairs = (item.split("=", 1) for item in line.split(":", 1)[1].split(", "))
            jobs[rule] = (jobs[rule][0], {k.strip(): v for k, v in pairs})
    return jobs


def test_torch_stages_claim_every_core_and_every_stage_states_its_resources():
    jobs = dry_run_jobs("--cores", "3")
    assert set(jobs) == set(STAGES) | {"all"}
    for stage in STAGES:
        threads, resources = jobs[stage]
        assert threads == (3 if stage in MULTICORE_STAGES else 1), stage
        assert int(resources["mem_mb"]) > 0 and int(resources["runtime"]) > 0, stage
        assert "gpu" not in resources, stage  # device auto asks for no GPU


def test_device_stages_ask_for_a_gpu_when_the_device_is_cuda():
    jobs = dry_run_jobs("--cores", "1", "--config", "device=cuda")
    assert {stage for stage in STAGES if jobs[stage][1].get("gpu") == "1"} == set(DEVICE_STAGES)


def test_device_stages_are_those_that_select_a_device():
    """The stages whose module calls select_device, itself or through run_training (mofa/training/runs.py)."""
    for stage in STAGES:
        code = (REPO_ROOT / "pipelines" / f"{stage}.py").read_text()
        assert ("select_device" in code or "run_training" in code) == (stage in DEVICE_STAGES), stage


def test_snakemake_dry_run_ci():
    result = snakemake("-n", "--forceall", "--cores", "1", "--configfile", "config/ci.yaml")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "results/ci/figures/face_model.png" in out
    assert "results/default" not in out  # --configfile replaces the default preset, it does not merge


def test_snakemake_passes_config_overrides_to_the_stages(tmp_path):
    result = snakemake("-n", "--forceall", "--printshellcmds", "--cores", "1", "--configfile", "config/ci.yaml",
                       "--config", f"results_dir={tmp_path}")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert f"pipelines.face_model --config config/ci.yaml --set 'results_dir=\"{tmp_path}\"'" in out
    assert f"{tmp_path}/ci/figures/face_model.png" in out


def test_snakemake_rejects_a_bad_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: ci\nface_model:\n  foo: 1\n")
    result = snakemake("-n", "--cores", "1", "--configfile", str(bad))
    assert result.returncode != 0
    assert "foo" in result.stdout + result.stderr


def test_stage_command_line_reports_config_errors_in_one_line(capsys, restore_logging):
    from pipelines import face_model
    status = _stage.main("face_model", face_model.run, "test", ["--config", "ci", "--set", "face_model.foo=1"])
    assert status == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]
    assert len(errors) == 1
    assert errors[0].endswith("stage face_model failed: mofa/presets/ci.yaml + overrides: unknown key 'face_model.foo' "
                              "(face_model takes cache_dir, expression_path, face_region, landmarks_path, "
                              "n_expression, n_reflectance, n_shape, name, path)")


def test_parse_overrides():
    assert _stage.parse_overrides(["face_model.n_shape=10", "device=cpu", "face_model.path=null"]) == \
        {"face_model.n_shape": 10, "device": "cpu", "face_model.path": None}
    with pytest.raises(MofaError, match="KEY=VALUE"):
        _stage.parse_overrides(["n_shape"])


# Runs the face_model stage on the small synthetic model in a fresh interpreter, so that the modules it
# imports are exactly those the stage needs; prints its metrics and those modules' files.
STAGE_ON_SMALL_MODEL = """
import json, sys
sys.path.insert(0, "tests")
from conftest import make_small_face_model
import mofa.facemodel
from mofa.config import load_config
from pipelines import face_model

results, cached = sys.argv[1], sys.argv[2]
model = make_small_face_model()

def build(cfg, rebuild=False):
    model.save(cached)
    return model

face_model.build_face_model = mofa.facemodel.build_face_model = build
face_model.cache_path = mofa.facemodel.cache_path = lambda cfg: __import__("pathlib").Path(cached)
metrics = face_model.run(load_config("ci", {"results_dir": results}))
files = sorted({m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)})
print(json.dumps({"metrics": metrics, "model": [model.n_vertices, model.n_shape, model.n_expression,
                  model.n_reflectance], "files": files}))
"""


def test_face_model_stage_writes_its_outputs_and_declares_its_code(tmp_path):
    """The stage on the small synthetic model: every declared output exists, the metrics add up, and
    every project module it imports is among its declared sources (what DVC and Snakemake rerun it for)."""
    from pipelines import face_model

    cached = tmp_path / "cache" / "small.npz"
    result = subprocess.run([sys.executable, "-c", STAGE_ON_SMALL_MODEL, str(tmp_path / "results"), str(cached)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    metrics, (n_vertices, n_shape, n_expression, n_reflectance) = report["metrics"], report["model"]

    outputs = face_model.outputs(load_config("ci", {"results_dir": str(tmp_path / "results")}))
    assert all(path.is_file() for path in outputs.values())
    assert json.loads(outputs["metrics"].read_text()) == metrics
    assert (metrics["n_vertices"], metrics["n_shape"]) == (n_vertices, n_shape)
    assert metrics["code_size"] == n_shape + n_expression + n_reflectance + 3 + 3 + 27
    assert outputs["model"].read_bytes() == cached.read_bytes()

    used = {Path(f).resolve().relative_to(REPO_ROOT).as_posix() for f in report["files"]
            if Path(f).resolve().is_relative_to(REPO_ROOT / "mofa") or Path(f).resolve().is_relative_to(REPO_ROOT / "pipelines")}
    undeclared = {f for f in used if not any(f == s or f.startswith(s + "/") for s in face_model.STAGE.sources)}
    assert not undeclared, f"pipelines/stages.py: face_model's sources (and dvc.yaml deps) miss {sorted(undeclared)}"
