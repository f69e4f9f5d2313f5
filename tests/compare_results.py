"""Two pipeline runs' tables compared cell by cell, timings aside: the SLURM test's check that a cluster
run gives the local tables, and the check that a refactoring changes no number (the `ci` preset run at
two commits):

    python tests/compare_results.py A/ci/tables B/ci/tables --ignore-commit --results-dirs A B \
        --figures A/ci/figures B/ci/figures

prints each table that differs and exits 1, or prints how many tables agree and exits 0."""
from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

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
# Figures that draw measured times: E7's speeds, E4's time per image.
TIMED_FIGURES = frozenset({"e7_speed", "e4_baselines"})
PROVENANCE = "; preset "  # where a table's title ends (pipelines.tables.provenance)
RULE = re.compile(r"(:?)-+(:?)")  # a Markdown table's header rule cell, e.g. :---, ---:
COMMIT = re.compile(r"commit [0-9a-f]{7,40}(\+dirty)?")  # provenance's `commit <hash>` (pipelines.tables.git_commit)


def located(path: Path, results_dir: str, ignore_commit: bool = False) -> str:
    """The file's text with `results_dir` written as <results_dir> (and, with ignore_commit, each
    provenance's commit as <commit>)."""
    text = path.read_text().replace(results_dir, "<results_dir>") if results_dir else path.read_text()
    return COMMIT.sub("commit <commit>", text) if ignore_commit else text


def table_lines(path: Path, results_dir: str, ignore_commit: bool = False) -> list[list[str] | str]:
    """A table file as lines: a CSV row or a Markdown table row as its list of cells (stripped of the
    padding Markdown adds, which follows the widest cell), any other line as it is."""
    text = located(path, results_dir, ignore_commit)
    if path.suffix == ".csv":
        lines = [line if line.startswith("#") else next(csv.reader([line])) for line in text.splitlines()]
    else:
        lines = [[cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else line
                 for line in text.splitlines()]
        # the rule under the header is as wide as each column's widest cell: keep only its alignment
        lines = [[RULE.sub(lambda m: f"{m[1]}-{m[2]}", cell) for cell in line]
                 if isinstance(line, list) and all(RULE.fullmatch(cell) for cell in line) else line for line in lines]
    if path.stem in TIMED_TITLES:  # keep the provenance (after the title), drop the title's measured figures
        lines = [line.split(PROVENANCE, 1)[-1] if isinstance(line, str) and PROVENANCE in line else line
                 for line in lines if not (isinstance(line, str) and line.startswith("**"))]  # Markdown title
    return lines


def without_columns(lines: list, columns: set[str], path: Path) -> list:
    """`lines` without the table columns named `columns`, each of which must be in the header."""
    rows = [line for line in lines if isinstance(line, list)]
    header = rows[0]
    if not columns <= set(header):
        raise AssertionError(f"{path}: no column {sorted(columns - set(header))} (TIMING_COLUMNS is stale)")
    keep = [i for i, name in enumerate(header) if name not in columns]
    return [[line[i] for i in keep] if isinstance(line, list) else line for line in lines]


def differences(first: Path, second: Path, first_dir: str = "", second_dir: str = "",
                ignore_commit: bool = False) -> list[str]:
    """The tables that differ between two tables folders, timing columns and results dirs aside."""
    names = sorted(p.name for p in first.iterdir())
    found = []
    if names != sorted(p.name for p in second.iterdir()):
        found.append(f"table files differ: {first} {names}, {second} {sorted(p.name for p in second.iterdir())}")
    for name in names:
        a, b = first / name, second / name
        if not b.is_file():
            continue
        timing = TIMING_COLUMNS.get(a.stem)
        if timing is None:
            same = located(a, first_dir, ignore_commit) == located(b, second_dir, ignore_commit)
        else:
            same = (without_columns(table_lines(a, first_dir, ignore_commit), timing, a)
                    == without_columns(table_lines(b, second_dir, ignore_commit), timing, b))
        if not same:
            found.append(f"{name} differs (diff {a} {b})")
    return found


def figure_differences(first: Path, second: Path, skip: frozenset[str] = TIMED_FIGURES) -> list[str]:
    """The figures (PNG) whose pixels differ between two figures folders, those named in `skip` aside
    (their PNG text, the provenance, is not compared: it names the commit)."""
    import numpy as np
    from PIL import Image

    found = []
    for a in sorted(first.glob("*.png")):
        b = second / a.name
        if a.stem in skip:
            continue
        if not b.is_file():
            found.append(f"{a.name}: not in {second}")
        elif not np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))):
            found.append(f"{a.name} differs ({a} {b})")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path, help="a run's tables folder")
    parser.add_argument("second", type=Path, help="the other run's tables folder")
    parser.add_argument("--results-dirs", nargs=2, default=("", ""), metavar=("FIRST", "SECOND"),
                        help="each run's results_dir, written as <results_dir> before comparing")
    parser.add_argument("--ignore-commit", action="store_true", help="runs of two commits: mask each provenance's commit")
    parser.add_argument("--figures", nargs=2, type=Path, metavar=("FIRST", "SECOND"),
                        help="also compare the pixels of two figures folders (TIMED_FIGURES aside)")
    args = parser.parse_args(argv)
    found = differences(args.first, args.second, *args.results_dirs, ignore_commit=args.ignore_commit)
    if args.figures:
        found += figure_differences(*args.figures)
    for line in found:
        print(line)
    if not found:
        figures = f" and {len(list(args.figures[0].glob('*.png')))} figures" if args.figures else ""
        print(f"{len(list(args.first.iterdir()))} tables{figures} agree, timings aside")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
