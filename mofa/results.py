"""Reading the result tables the pipeline wrote (results/<preset>/tables/*.csv, each starting with a
'# title; provenance' line, pipelines/tables.py) and the main table: one row per method or variant with
its errors beside the paper's, built from E1, E3 and (when present) E4. Used by the report stage and by
`mofa report`."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mofa.errors import MofaError

PROVENANCE_START = "; preset "  # where a table's title ends and its provenance begins


@dataclass(frozen=True)
class ResultTable:
    path: Path
    title: str  # the file name where the CSV has no '# title; provenance' line
    provenance: str  # '' where the CSV has none
    frame: pd.DataFrame


def read_table(path: Path) -> ResultTable:
    """A result CSV with its title and provenance; a MofaError naming the file if it cannot be read."""
    try:
        with open(path) as fh:
            first = fh.readline().rstrip("\n")
        frame = pd.read_csv(path, comment=None, skiprows=1 if first.startswith("# ") else 0)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise MofaError(f"{path}: not a readable result table ({exc.__class__.__name__}: {exc})") from None
    if not first.startswith("# "):
        return ResultTable(path, path.stem, "", frame)
    head = first[2:]
    cut = head.rfind(PROVENANCE_START)
    if cut < 0:
        return ResultTable(path, head, "", frame)
    return ResultTable(path, head[:cut], head[cut + 2:], frame)


# The main table's columns: ours, each beside the paper's.
MAIN_COLUMNS = ("experiment", "dataset", "method",
                "geometric_error_mm", "paper_geometric_error_mm",
                "photometric_error", "paper_photometric_error",
                "landmark_error_px", "paper_landmark_error_px",
                "ms_per_image", "paper_ms_per_image")
_E1_METRICS = {"geometric_error": "geometric_error_mm", "photometric_error": "photometric_error",
               "landmark_error": "landmark_error_px"}


def _e1_rows(frame: pd.DataFrame) -> list[dict]:
    """E1 (tables/e1_synthetic.csv, one row per encoder and metric): each encoder's error after training."""
    from mofa.paper import display_name

    if "encoder" not in frame:
        frame = frame.assign(encoder="encoder")
    rows = []
    for encoder, group in frame.groupby("encoder", sort=False):
        row = {"experiment": "E1", "dataset": "synthetic test", "method": f"MoFA {display_name(str(encoder))} without landmarks"}
        for record in group.itertuples():
            if record.metric in _E1_METRICS:
                row[_E1_METRICS[record.metric]] = record.ours_end
                row[f"paper_{_E1_METRICS[record.metric]}"] = record.paper_end
        rows.append(row)
    return rows


def _e3_rows(frame: pd.DataFrame) -> list[dict]:
    """E3 (tables/e3_variants.csv, one row per variant): the final errors on the real eval split."""
    return [{"experiment": "E3", "dataset": "AFLW2000 eval", "method": f"MoFA {r['variant']}",
             "photometric_error": r.get("photometric_error"), "paper_photometric_error": r.get("paper_photometric_error"),
             "landmark_error_px": r.get("landmark_error"), "paper_landmark_error_px": r.get("paper_landmark_error")}
            for r in frame.to_dict("records")]


def _e4_rows(frame: pd.DataFrame) -> list[dict]:
    """E4 (tables/e4_baselines.csv, one row per dataset and method): mean errors and time per image."""
    return [{"experiment": "E4", "dataset": str(r.get("dataset", "")), "method": str(r.get("method", "")),
             "geometric_error_mm": r.get("geometric_error_mean"), "photometric_error": r.get("photometric_error_mean"),
             "landmark_error_px": r.get("landmark_error_mean"), "ms_per_image": r.get("ms_per_image"),
             "paper_ms_per_image": r.get("paper_ms_per_image")}
            for r in frame.to_dict("records")]


# (table file under tables/, rows it gives): the experiments the main table is built from, in order.
MAIN_SOURCES: tuple[tuple[str, Callable[[pd.DataFrame], list[dict]]], ...] = (
    ("e1_synthetic.csv", _e1_rows), ("e3_variants.csv", _e3_rows), ("e4_baselines.csv", _e4_rows))


def main_table(tables_dir: Path) -> pd.DataFrame:
    """One row per method or variant (E1, E3, and E4 where its table exists) with its errors and the
    paper's; a column no experiment fills is dropped. A MofaError when none of the tables exists."""
    rows = []
    for name, to_rows in MAIN_SOURCES:
        if (tables_dir / name).is_file():
            try:
                rows += to_rows(read_table(tables_dir / name).frame)
            except (KeyError, AttributeError) as exc:  # a table without a column its rows need
                column = exc.args[0] if isinstance(exc, KeyError) else getattr(exc, "name", exc)
                raise MofaError(f"{tables_dir / name}: not a readable result table (no column {column}); "
                                "delete it and run the stage that writes it again") from None
    if not rows:
        raise MofaError(f"{tables_dir}: none of {', '.join(n for n, _ in MAIN_SOURCES)}; run the pipeline first "
                        "(make reproduce, or snakemake --configfile config/<preset>.yaml)")
    frame = pd.DataFrame(rows).reindex(columns=list(MAIN_COLUMNS))
    keep = [c for c in MAIN_COLUMNS if c in ("experiment", "dataset", "method") or frame[c].notna().any()]
    return frame[keep]


def format_value(value) -> str:
    """A number to 4 significant digits, '' for a missing one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
