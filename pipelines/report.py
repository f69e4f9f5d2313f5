"""Stage `report`: one HTML and one Markdown page collecting every result table (ours beside the paper's
numbers) and every figure of the preset (each table's spread figure beside it), opening with the scorecard
of the paper's findings (mofa/scorecard.py), then the main table (one row per method, mofa/results.py), the
run's metadata (commit, config hash, data-manifest hashes, package versions, device) and the wall time
of each stage from Snakemake's benchmark files.

Writes results/<preset>/report.html, report.md and tables/runtime.csv + .md.

    python -m pipelines.report --config config/ci.yaml
"""
from __future__ import annotations

import html
import logging
import math
import os
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import pandas as pd
from PIL import Image

from mofa.bench import device_name
from mofa.config import results_dir, select_device
from mofa.errors import MofaError
from mofa.paper import paper_numbers
from mofa.results import format_value, main_table, read_table
from mofa.scorecard import read_tables, scorecard
from pipelines import _stage, paths
from pipelines.stages import STAGES, needed
from pipelines.tables import PNG_KEY, data_hashes, git_commit, result_config_hash, write_table, write_text

# Its needs are the experiment stages whose tables and figures it collects (pipelines/stages.py).
STAGE = STAGES["report"]
NAME = STAGE.name
outputs = STAGE.outputs
# Distribution names whose versions the report lists, by what they are called in it.
PACKAGES = {"torch": ("torch",), "numpy": ("numpy",), "open3d": ("open3d", "open3d-cpu"),
            "opencv": ("opencv-contrib-python", "opencv-python", "opencv-python-headless"),
            "mediapipe": ("mediapipe",), "pandas": ("pandas",), "matplotlib": ("matplotlib",),
            "snakemake": ("snakemake",), "dvc": ("dvc",)}
NOT_MEASURED = "not measured"
MAX_ROWS = 60  # longer tables (per-image values) are cut in the report; the CSV holds them all
log = logging.getLogger(f"mofa.stage.{NAME}")


def stages() -> list[str]:
    """Every stage the report covers, upstream first (the experiments and the stages they need)."""
    return needed(NAME)


def ordered(paths: list[Path], cfg: Mapping) -> list[Path]:
    """`paths` in the order of the stages that wrote them (stages()), then by name; files no stage
    declares come last."""
    rank = {}
    for i, stage in enumerate(stages()):
        for path in STAGES[stage].outputs(cfg).values():
            rank.setdefault(Path(path), i)
    return sorted(paths, key=lambda p: (rank.get(p, len(rank) + 1), p.name))


def collected(cfg: Mapping, pattern: str) -> list[Path]:
    """The files under results/<preset>/ matching `pattern` (e.g. 'tables/*.csv'), minus this stage's own."""
    own = set(outputs(cfg).values())
    return ordered([p for p in results_dir(cfg).glob(pattern) if p not in own], cfg)


def read_benchmark(path: Path) -> dict | None:
    """Wall time (s), peak memory (MB) and CPU time (s) from a Snakemake benchmark file; None if absent."""
    if not path.is_file():
        return None
    try:
        row = pd.read_csv(path, sep="\t").iloc[-1]
        return {"wall_s": float(row["s"]), "max_rss_mb": float(row.get("max_rss", math.nan)),
                "cpu_s": float(row.get("cpu_time", math.nan))}
    except (OSError, ValueError, KeyError, IndexError, pd.errors.ParserError, pd.errors.EmptyDataError):
        log.warning("%s: not a Snakemake benchmark file; reported as %s", path, NOT_MEASURED)
        return None


def hms(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def runtime_table(cfg: Mapping) -> pd.DataFrame:
    """Wall time of each stage from results/<preset>/benchmarks/<stage>.tsv ('not measured' where a stage
    ran outside Snakemake), and the total of those measured."""
    rows = []
    for stage in stages():
        bench = read_benchmark(paths.benchmark_path(cfg, stage))
        rows.append({"stage": stage, "wall_time": hms(bench["wall_s"]) if bench else NOT_MEASURED,
                     **(bench or {"wall_s": math.nan, "max_rss_mb": math.nan, "cpu_s": math.nan})})
    frame = pd.DataFrame(rows)
    measured = frame[frame.wall_time != NOT_MEASURED]
    missing = len(frame) - len(measured)
    total = {"stage": "total" + (f" ({missing} not measured)" if missing else ""),
             "wall_time": hms(measured.wall_s.sum()) if len(measured) else NOT_MEASURED,
             "wall_s": measured.wall_s.sum() if len(measured) else math.nan,
             "max_rss_mb": measured.max_rss_mb.max() if len(measured) else math.nan,
             "cpu_s": measured.cpu_s.sum() if len(measured) else math.nan}
    return pd.concat([frame, pd.DataFrame([total])], ignore_index=True)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name, dists in PACKAGES.items():
        for dist in dists:
            try:
                versions[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
        else:
            versions[name] = "not installed"
    return versions


def run_metadata(cfg: Mapping) -> dict[str, str]:
    """What the report's numbers came from: one line each."""
    data = data_hashes(cfg, NAME)
    return {"preset": cfg["preset"], "git commit": git_commit(), "config hash": result_config_hash(cfg),
            **{f"data manifest {name}": digest for name, digest in data.items()},
            "device": device_name(select_device(cfg["device"])), "platform": platform.platform(),
            **{f"version {name}": version for name, version in package_versions().items()}}


def figure_provenance(path: Path) -> str:
    try:
        with Image.open(path) as image:
            return image.text.get(PNG_KEY, "")
    except OSError as exc:
        log.warning("%s: unreadable PNG (%s)", path, exc)
        return ""


def shown(frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The first MAX_ROWS rows, and a note when there are more."""
    if len(frame) <= MAX_ROWS:
        return frame, ""
    return frame.head(MAX_ROWS), f"first {MAX_ROWS} of {len(frame)} rows"


def format_frame(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.apply(lambda column: column.map(format_value))


SPREAD_SUFFIX = "_spread"  # figures/<table stem>_spread.png sits beside tables/<table stem>.csv


def beside(table_path: Path, figures: list[Path]) -> Path | None:
    """The spread figure shown beside a table (figures/<stem>_spread.png), if there is one."""
    return next((f for f in figures if f.stem == table_path.stem + SPREAD_SUFFIX), None)


def render_markdown(cfg: Mapping, scores: pd.DataFrame, main: pd.DataFrame | None, tables: list, figures: list[Path],
                    runtime: pd.DataFrame, meta: Mapping[str, str], paper: pd.DataFrame) -> str:
    root = results_dir(cfg)
    out = [f"# MoFA-Bench report: {cfg['preset']} preset", ""]
    out += ["## Scorecard: the paper's findings here", "", scores.to_markdown(index=False), ""]
    out += ["## Main results (ours beside the paper's)", ""]
    out += [format_frame(main).to_markdown(index=False) if main is not None else "_no E1/E3/E4 table yet_", ""]
    out += ["## Tables", ""]
    for table in tables:
        frame, note = shown(table.frame)
        out += [f"### {table.title}", "", f"`{os.path.relpath(table.path, root)}`" + (f" ({note})" if note else ""),
                "", format_frame(frame).to_markdown(index=False), "", f"_{table.provenance}_" if table.provenance else "", ""]
        if (spread := beside(table.path, figures)) is not None:
            rel = os.path.relpath(spread, root)
            out += [f"![{spread.stem}]({rel})", "", f"_{figure_provenance(spread)}_", ""]
    out += ["## Figures", ""]
    shown_beside = {beside(t.path, figures) for t in tables}
    for path in (f for f in figures if f not in shown_beside):
        rel = os.path.relpath(path, root)
        out += [f"### {path.stem}", "", f"![{path.stem}]({rel})", "", f"_{figure_provenance(path)}_", ""]
    out += ["## Wall time per stage", "", format_frame(runtime).to_markdown(index=False), ""]
    out += ["## Run", "", "| what | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in meta.items()], ""]
    out += ["## The paper's reported numbers", "", format_frame(paper).to_markdown(index=False), ""]
    return "\n".join(out)


CSS = """body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}
table{border-collapse:collapse;font-size:13px;margin-bottom:.5em;display:block;overflow-x:auto;max-width:100%}
td,th{border:1px solid #ccc;padding:2px 6px;white-space:nowrap}
th{background:#eee}.prov{color:#666;font-size:12px}img{max-width:100%;border:1px solid #ddd}"""


def _html_table(frame: pd.DataFrame, css_class: str) -> str:
    return format_frame(frame).to_html(index=False, classes=css_class, border=0, escape=True)


def render_html(cfg: Mapping, scores: pd.DataFrame, main: pd.DataFrame | None, tables: list, figures: list[Path],
                runtime: pd.DataFrame, meta: Mapping[str, str], paper: pd.DataFrame) -> str:
    root, esc = results_dir(cfg), html.escape
    title = f"MoFA-Bench report: {cfg['preset']} preset"
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{CSS}</style>"
           f"</head><body><h1>{esc(title)}</h1>", "<h2 id='scorecard'>Scorecard: the paper's findings here</h2>",
           scores.to_html(index=False, classes="scorecard", border=0, escape=True), "<h2 id='main'>Main results (ours beside the paper's)</h2>",
           _html_table(main, "main-table") if main is not None else "<p>no E1/E3/E4 table yet</p>",
           "<h2 id='tables'>Tables</h2>"]
    for table in tables:
        frame, note = shown(table.frame)
        rel = os.path.relpath(table.path, root)
        out += [f"<h3>{esc(table.title)}</h3>",
                f"<p class='prov'><a href='{esc(rel)}'>{esc(rel)}</a>{esc(f' ({note})' if note else '')}</p>",
                _html_table(frame, "result-table"), f"<p class='prov'>{esc(table.provenance)}</p>"]
        if (spread := beside(table.path, figures)) is not None:
            rel = os.path.relpath(spread, root)
            out += [f"<img class='figure' src='{esc(rel)}' alt='{esc(spread.stem)}'>",
                    f"<p class='prov'>{esc(figure_provenance(spread))}</p>"]
    out.append("<h2 id='figures'>Figures</h2>")
    shown_beside = {beside(t.path, figures) for t in tables}
    for path in (f for f in figures if f not in shown_beside):
        rel = os.path.relpath(path, root)
        out += [f"<h3>{esc(path.stem)}</h3>", f"<img class='figure' src='{esc(rel)}' alt='{esc(path.stem)}'>",
                f"<p class='prov'>{esc(figure_provenance(path))}</p>"]
    out += ["<h2 id='runtime'>Wall time per stage</h2>", _html_table(runtime, "runtime-table"),
            "<h2 id='run'>Run</h2>", _html_table(pd.DataFrame({"what": list(meta), "value": list(meta.values())}),
                                                 "run-table"),
            "<h2 id='paper'>The paper's reported numbers</h2>", _html_table(paper, "paper-table"), "</body></html>"]
    return "\n".join(out) + "\n"


def run(cfg: dict) -> dict:
    out = outputs(cfg)
    runtime = runtime_table(cfg)
    write_table(runtime, out["runtime"], out["runtime_md"], cfg, "Wall time per stage (Snakemake benchmark files)",
                stage=NAME)
    tables = [read_table(path) for path in collected(cfg, "tables/*.csv")]
    figures = collected(cfg, "figures/*.png")
    try:
        main = main_table(results_dir(cfg) / "tables")
    except MofaError as exc:
        log.warning("%s", exc)
        main = None
    meta = run_metadata(cfg)
    scores = scorecard(read_tables(results_dir(cfg) / "tables"))
    parts = (cfg, scores, main, tables, figures, runtime, meta, paper_numbers())
    write_text(out["markdown"], render_markdown(*parts))
    write_text(out["html"], render_html(*parts))
    return {"tables": len(tables), "figures": len(figures),
            "claims_holding": int((scores.verdict == "holds").sum()), "claims": len(scores),
            "stages_measured": int((runtime.wall_time.iloc[:-1] != NOT_MEASURED).sum()),
            "wall_s_total": float(runtime.wall_s.iloc[-1])}


if __name__ == "__main__":
    raise SystemExit(_stage.main(NAME, run, __doc__.splitlines()[0]))
