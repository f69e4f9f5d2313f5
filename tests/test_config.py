"""Config loading: presets, defaults, one-line errors that name the key, agreement with Snakemake."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError

from mofa.config import (CONFIG_DIR, REPO_ROOT, SCHEMA_PATH, config_hash, load_config, load_schema,
                         presets, results_dir, select_device, validate_config)
from mofa.errors import MofaError
from mofa.settings import load_settings


def write(tmp_path: Path, data: dict, name: str = "my.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def merged(base: dict, extra: dict) -> dict:
    """base with extra's keywords added, nested mappings (e.g. `properties`) merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def resolved(sub: dict, root: dict | None = None) -> dict:
    """A subschema with its `$ref` (to root's `$defs`) expanded; both apply, as in JSON Schema 2020-12."""
    root = root or load_schema()
    if "$ref" not in sub:
        return sub
    target = root["$defs"][sub["$ref"].removeprefix("#/$defs/")]
    return merged(resolved(target, root), {k: v for k, v in sub.items() if k != "$ref"})


def schema_defaults(schema: dict) -> dict:
    """The config a schema's defaults alone give, nested sections included."""
    out = {}
    for key, sub in schema.get("properties", {}).items():
        sub = resolved(sub)
        if sub.get("type") == "object":
            out[key] = schema_defaults(sub)
        elif "default" in sub:
            out[key] = sub["default"]
    return out


def object_schemas(schema: dict, path: str = "(top level)"):
    """(path, object schema) of every section, `$ref`s expanded, and of what a section open to named
    entries takes (path '<section>.<name>')."""
    yield path, schema
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        yield from object_schemas(resolved(extra), f"{path}.<name>")
    for key, sub in schema.get("properties", {}).items():
        sub = resolved(sub)
        if sub.get("type") == "object":
            yield from object_schemas(sub, key if path == "(top level)" else f"{path}.{key}")


def test_preset_files_match_schema_enum():
    files = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.name != "schema.yaml")
    assert files == sorted(presets()) == ["ci", "default", "paper"]


@pytest.mark.parametrize("name", ["ci", "default", "paper"])
def test_each_preset_loads(name):
    cfg = load_config(name)
    assert cfg["preset"] == name
    assert load_config(CONFIG_DIR / f"{name}.yaml") == cfg  # a path means the same as the name
    assert results_dir(cfg) == Path("results") / name
    assert cfg["face_model"]["n_shape"] >= 0


def test_ci_is_smaller_than_default():
    ci, default = load_config("ci")["face_model"], load_config("default")["face_model"]
    assert all(ci[k] <= default[k] for k in ("n_shape", "n_expression", "n_reflectance"))


OPEN_SECTIONS = {"encoders", "e1", "e3"}  # encoders.<your encoder>, e1.<encoder>'s and e3.<encoder>'s schedules
# Free-form: an encoder's constructor arguments, which its constructor checks (build_encoder names the key).
FREE_FORM = {"encoders.<name>.options", "encoders.alexnet.options", "encoders.vgg_face.options",
             "encoders.dlib_resnet.options"}


def test_schema_closes_every_section_and_defaults_every_key():
    schema = load_schema()
    for path, sub in object_schemas(schema):
        extra = sub.get("additionalProperties")
        if path in FREE_FORM:
            assert "properties" not in sub and "default" in sub, path
            continue
        if path in OPEN_SECTIONS:
            assert resolved(extra)["additionalProperties"] is False, f"{path}: named entries must be closed"
        else:
            assert extra is False, f"{path}: additionalProperties must be false"
        for key, prop in sub["properties"].items():
            if path == "(top level)" and key == "preset":
                continue  # the one key without a default: a config must say which preset it is
            assert "default" in prop, f"{path}.{key}: no default"


def test_defaults_are_filled(tmp_path):
    cfg = load_config(write(tmp_path, {"preset": "ci"}))
    expected = schema_defaults(load_schema())
    expected["preset"] = "ci"
    assert cfg == expected
    assert cfg["face_model"]["n_shape"] == 80 and cfg["camera"]["image_size"] == 240
    assert cfg["light"]["ambient_offset"] == pytest.approx(0.7)


def test_filled_defaults_are_copies(tmp_path):
    first = load_config(write(tmp_path, {"preset": "ci"}))
    first["face_model"]["n_shape"] = 1
    assert load_config(write(tmp_path, {"preset": "ci"}))["face_model"]["n_shape"] == 80


def test_unknown_key_is_named(tmp_path):
    path = write(tmp_path, {"preset": "ci", "face_model": {"foo": 1}})
    with pytest.raises(MofaError) as info:
        load_config(path)
    message = str(info.value)
    assert "my.yaml" in message and "unknown key 'face_model.foo'" in message
    assert "n_shape" in message  # says what the section does take
    assert "\n" not in message


def test_unknown_top_level_key_is_named(tmp_path):
    with pytest.raises(MofaError, match=r"unknown key 'face_modle'"):
        load_config(write(tmp_path, {"preset": "ci", "face_modle": {}}))


def test_bad_type_names_the_key(tmp_path):
    with pytest.raises(MofaError, match=r"my\.yaml: face_model\.n_shape: 'many' is not of type 'integer'"):
        load_config(write(tmp_path, {"preset": "ci", "face_model": {"n_shape": "many"}}))


def test_bad_value_names_the_key():
    with pytest.raises(MofaError, match=r"ci\.yaml \+ overrides: face_model\.n_shape: -1 is less than the minimum of 0"):
        load_config("ci", {"face_model": {"n_shape": -1}})


def test_encoder_dropout_must_be_a_probability_below_one():
    assert load_config("ci")["encoders"]["alexnet"]["dropout"] is None  # the architecture's own
    assert load_config("ci", {"encoders": {"alexnet": {"dropout": 0.0}}})["encoders"]["alexnet"]["dropout"] == 0.0
    with pytest.raises(MofaError, match=r"encoders\.alexnet\.dropout: 1\.0 is greater than or equal to the maximum of 1"):
        load_config("ci", {"encoders": {"alexnet": {"dropout": 1.0}}})


def test_hold_names_in_the_schema_are_the_layouts():
    """e1.hold's enum lists exactly the names CodeLayout.mask accepts: the code parts and the pose entries."""
    from mofa.decoder.layout import POSE_ENTRIES, CodeLayout

    schema = yaml.safe_load((CONFIG_DIR / "schema.yaml").read_text())
    enum = schema["properties"]["e1"]["properties"]["hold"]["items"]["enum"]
    assert enum == [*CodeLayout(1, 1, 1).slices, *POSE_ENTRIES]


def test_number_written_as_text_gets_a_hint(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("preset: ci\ncamera:\n  focal_length_px: 8e2\n")  # YAML 1.1 reads 8e2 as a string
    with pytest.raises(MofaError, match=r"camera\.focal_length_px: .*write 1\.0e-3"):
        load_config(path)


def test_missing_preset_and_unknown_preset(tmp_path):
    with pytest.raises(MofaError, match=r"missing key 'preset'"):
        load_config(write(tmp_path, {}))
    with pytest.raises(MofaError, match=r"unknown preset 'tiny'"):
        load_config("tiny")


def test_a_preset_file_with_a_typo_names_the_presets():
    """`make reproduce PRESET=cii` reads config/cii.yaml: the message says which presets there are."""
    with pytest.raises(MofaError, match=r"cii\.yaml: no such file: 'cii' is not a preset \(have ci, default, paper"):
        load_config(REPO_ROOT / "config" / "cii.yaml")


def test_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(MofaError, match=r"nope\.yaml: cannot read config"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: [ci\n")
    with pytest.raises(MofaError, match=r"bad\.yaml: line \d+: not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("text, problem", [
    ("preset: ci\nseed: 1\nseed: 2\n", r"line 3: not valid YAML \(duplicate key 'seed'\)"),
    ("preset: ci\ntraining:\n  lr: 0.1\n  lr: 0.2\n", r"line 4: not valid YAML \(duplicate key 'lr'\)"),
    ("preset: ci\ntraining:\n  lr: .nan\n", r"training\.lr: nan is not a finite number"),
    ("preset: ci\nlight:\n  ambient_offset: -.inf\n", r"light\.ambient_offset: -inf is not a finite number"),
    ("preset: ci\nseed: 99999999999999999999999\n", r"seed: 99999999999999999999999 is greater than the maximum"),
    ("preset: ci\nsynthetic:\n  distribution:\n    blendshapes: [3, 1]\n",
     r"synthetic\.distribution\.blendshapes: \[3, 1\] is \[minimum, maximum\], but 3 > 1"),
    ("preset: ci\ne7:\n  batch_sizes: []\n", r"e7\.batch_sizes: \[\] should be non-empty"),
    ("preset: ci\ntraining:\n  batch_size: '4'\n", r"training\.batch_size: '4' is not of type 'integer' \(a number in quotes"),
])
def test_a_config_that_yaml_or_the_schema_would_let_through_is_one_line(tmp_path, text, problem):
    """What PyYAML and JSON Schema accept but the run would trip over later (a second `seed:` that
    silently wins, .nan that passes every minimum, a seed torch cannot take, an empty list, an inverted
    range): refused when loaded, in one line naming the file and the key."""
    path = tmp_path / "my.yaml"
    path.write_text(text)
    with pytest.raises(MofaError, match=r"my\.yaml: " + problem) as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_a_whole_float_for_an_integer_key_is_an_int(tmp_path):
    """JSON Schema counts 2.0 as an integer; range() and slicing do not, so the loaded config has 2."""
    path = tmp_path / "my.yaml"
    path.write_text("preset: ci\nface_model:\n  n_shape: 10.0\ne7:\n  batch_sizes: [1.0, 2]\ntraining:\n  lr: 1.0\n")
    cfg = load_config(path)
    assert cfg["face_model"]["n_shape"] == 10 and type(cfg["face_model"]["n_shape"]) is int
    assert [type(b) for b in cfg["e7"]["batch_sizes"]] == [int, int]
    assert type(cfg["training"]["lr"]) is float  # a number key keeps its float
    path.write_text("preset: ci\nface_model:\n  n_shape: 10\ne7:\n  batch_sizes: [1, 2]\ntraining:\n  lr: 1.0\n")
    assert config_hash(cfg) == config_hash(load_config(path))  # the same run as with 10
    with pytest.raises(MofaError, match=r"face_model\.n_shape: 10\.5 is not of type 'integer'"):
        load_config("ci", {"face_model.n_shape": 10.5})


def test_overrides_nested_and_dotted():
    cfg = load_config("ci", {"face_model.n_shape": 7, "camera": {"image_size": 112}})
    assert cfg["face_model"]["n_shape"] == 7 and cfg["face_model"]["n_expression"] == 20
    assert cfg["camera"]["image_size"] == 112 and cfg["camera"]["distance_mm"] == 1000


def test_files_merge_in_order(tmp_path):
    extra = write(tmp_path, {"face_model": {"n_shape": 3}}, "extra.yaml")
    cfg = load_config(["ci", extra])
    assert cfg["preset"] == "ci" and cfg["face_model"]["n_shape"] == 3 and cfg["face_model"]["n_expression"] == 20


def test_config_hash_ignores_key_order_and_sees_values():
    cfg = load_config("ci")
    reordered = dict(reversed(list(cfg.items())))
    assert config_hash(reordered) == config_hash(cfg)
    changed = copy.deepcopy(cfg)
    changed["seed"] = 1
    assert config_hash(changed) != config_hash(cfg)


def test_device_and_camera():
    settings = load_settings("ci", {"device": "cpu", "camera": {"focal_length_px": 900}})
    assert select_device(settings.device).type == "cpu"
    camera = settings.camera
    assert (camera.image_size, camera.focal_length_px, camera.distance_mm, camera.translation_scale_mm) == (240, 900.0, 1000.0, 10.0)
    assert select_device(load_config("ci")["device"]).type in ("cpu", "cuda")


def _snakemake_validated(data: dict) -> dict:
    from snakemake.utils import validate
    data = copy.deepcopy(data)
    validate(data, str(SCHEMA_PATH))
    return data


@pytest.mark.parametrize("name", ["ci", "default", "paper"])
def test_snakemake_validate_agrees_with_load_config(name):
    raw = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    assert _snakemake_validated(raw) == load_config(name)


@pytest.mark.parametrize("bad", [
    {"face_model": {"foo": 1}},
    {"face_model": {"n_shape": -1}},
    {"camera": {"image_size": "big"}},
    {"device": "tpu"},
    {"preset": "huge"},
])
def test_snakemake_validate_rejects_what_load_config_rejects(bad):
    from mofa.config import merge
    data = merge(yaml.safe_load((CONFIG_DIR / "ci.yaml").read_text()), bad)
    with pytest.raises(WorkflowError):
        _snakemake_validated(data)
    with pytest.raises(MofaError):
        validate_config(copy.deepcopy(data), "ci.yaml")


def test_environment_yml_pins_what_pyproject_pins():
    """The conda route installs the same packages at the same pins as `make setup` (pyproject.toml's
    dependencies and its pipeline, cluster and test extras)."""
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = [*project["dependencies"], *extras["pipeline"], *extras["cluster"], *extras["test"]]
    environment = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip = next(entry["pip"] for entry in environment["dependencies"] if isinstance(entry, dict))
    assert [p for p in pip if p != "-e ."] == [w.replace(" ", "") for w in wanted]
    assert "-e ." in pip
