"""The comparison of two runs' tables and figures (tests/compare_results.py): the SLURM test's check and
the byte-identity check of a refactoring."""
from __future__ import annotations

import numpy as np
from PIL import Image

from compare_results import differences, figure_differences, main


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
    # Results dirs of other lengths widen a Markdown column, and its header rule, differently.
    for folder, root in ((local, "/x/before"), (slurm, "/x/after")):
        (folder / "e2_real_curves.md").write_text(f"| seconds | init |\n|--:|:{'-' * len(root + '/e1.pt')}|\n"
                                                  f"| 1 | {root}/e1.pt |\n")
    assert "e2_real_curves.md" not in " ".join(differences(local, slurm, "/x/before", "/x/after"))
    (slurm / "e2_real_curves.md").write_text("| seconds | init |\n|--:|---:|\n| 1 | /x/after/e1.pt |\n")
    assert "e2_real_curves.md" in " ".join(differences(local, slurm, "/x/before", "/x/after"))  # alignment counts


def test_the_commit_is_masked_only_when_asked(tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    stamp = "_preset ci, config 37200b4fa590, commit {}, data none, training precision fp32_\n"
    (first / "e8_qualitative.md").write_text("| a |\n" + stamp.format("16eb8bd1f0aa"))
    (second / "e8_qualitative.md").write_text("| a |\n" + stamp.format("c4ba0fa2b3c4+dirty"))
    assert len(differences(first, second)) == 1
    assert differences(first, second, ignore_commit=True) == []
    assert main([str(first), str(second), "--ignore-commit"]) == 0
    assert "1 tables agree" in capsys.readouterr().out
    (second / "e8_qualitative.md").write_text("| b |\n" + stamp.format("c4ba0fa2b3c4"))
    assert main([str(first), str(second), "--ignore-commit"]) == 1


def test_figures_compare_pixels_and_skip_timed_ones(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    pixels = np.zeros((4, 4, 3), np.uint8)
    for folder in (first, second):
        Image.fromarray(pixels).save(folder / "e1_synthetic_curves.png")
        Image.fromarray(pixels).save(folder / "e7_speed.png")
    assert figure_differences(first, second) == []
    pixels[0, 0] = 255
    Image.fromarray(pixels).save(second / "e7_speed.png")  # a timing figure: not compared
    assert figure_differences(first, second) == []
    Image.fromarray(pixels).save(second / "e1_synthetic_curves.png")
    assert len(figure_differences(first, second)) == 1
