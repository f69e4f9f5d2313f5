"""Every table and figure says where it came from: preset, config hash, commit, and the hashes of the data
manifests its stage read (pipelines/tables.py)."""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from mofa.config import load_config  # noqa: E402
from mofa.errors import MofaError  # noqa: E402
from mofa.figures.curves import save_figure  # noqa: E402
from pipelines import real_data, stages, synthetic, tables  # noqa: E402


@pytest.fixture
def cfg(tmp_path):
    """The ci config writing under tmp_path, with stand-in manifests of the synthetic and real data."""
    cfg = load_config("ci", {"results_dir": str(tmp_path / "results")})
    for name, path in synthetic.manifests(cfg).items():
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"split": name, "count": 4, "seconds": 1.5, "images_per_second": 2.7}))
    for path in real_data.manifests(cfg).values():
        path.parent.mkdir(parents=True)
        path.write_text("index,id,kept\n0,a,True\n")
    return cfg


def test_needed_stages_follow_needs_transitively():
    assert stages.needed("face_model") == []
    assert stages.needed("e1_synthetic") == ["face_model", "synthetic"]
    assert set(stages.needed("e8_qualitative")) >= {"synthetic", "real_data", "e1_synthetic", "e2_e3_real"}


def test_tables_name_the_data_their_stage_read(cfg, tmp_path):
    frame = pd.DataFrame({"metric": ["a"], "ours": [1.0]})
    csv, md = tmp_path / "t.csv", tmp_path / "t.md"
    tables.write_table(frame, csv, md, cfg, "E1 test", stage="e1_synthetic")
    first = csv.read_text().splitlines()[0]
    hashes = tables.data_hashes(cfg, "e1_synthetic")
    assert sorted(hashes) == ["synthetic/test", "synthetic/train"] and all(len(h) == 12 for h in hashes.values())
    assert first == f"# E1 test; preset ci, config {tables.result_config_hash(cfg)}, commit {tables.git_commit()}, " \
                    f"data synthetic/train={hashes['synthetic/train']} synthetic/test={hashes['synthetic/test']}, " \
                    f"training precision fp32"  # ci: the schema's fp32
    assert md.read_text().rstrip().endswith(first.split("; ", 1)[1] + "_")
    assert "data none" in tables.provenance(cfg, "e7_speed")  # reads the face model only
    assert set(tables.data_hashes(cfg, "e2_e3_real")) == {"synthetic/train", "synthetic/test", "real/aflw2000",
                                                          "real/ibug68"}


def test_manifest_hash_ignores_timings_but_not_content(cfg):
    path = synthetic.manifests(cfg)["synthetic/train"]
    before = tables.manifest_hash(path)
    path.write_text(json.dumps({"split": "synthetic/train", "count": 4, "seconds": 9.0, "images_per_second": 0.4}))
    assert tables.manifest_hash(path) == before
    path.write_text(json.dumps({"split": "synthetic/train", "count": 5, "seconds": 9.0}))
    assert tables.manifest_hash(path) != before
    path.unlink()
    with pytest.raises(MofaError, match="manifest.json: data manifest missing"):
        tables.manifest_hash(path)


def test_figures_carry_the_same_stamp_in_png_metadata(cfg, tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    out = save_figure(fig, tmp_path / "f.png", metadata=tables.figure_metadata(cfg, "e2_e3_real"))
    stamp = Image.open(out).text[tables.PNG_KEY]
    assert stamp == tables.provenance(cfg, "e2_e3_real")
    assert "real/aflw2000=" in stamp and "synthetic/test=" in stamp


def test_the_config_hash_of_results_ignores_where_they_go(cfg):
    elsewhere = dict(cfg, results_dir="/somewhere/else")
    assert tables.result_config_hash(elsewhere) == tables.result_config_hash(cfg)
    assert tables.result_config_hash(dict(cfg, seed=cfg["seed"] + 1)) != tables.result_config_hash(cfg)
