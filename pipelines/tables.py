"""Result tables: CSV + Markdown, each stamped with where it came from (preset, config hash, commit and
the hashes of the data manifests the stage read); figures carry the same stamp in their PNG metadata."""
from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from mofa import io
from mofa.config import REPO_ROOT, config_hash, select_device
from mofa.errors import MofaError
from mofa.training.precision import resolve_precision
from pipelines._stage import wrote
from pipelines.stages import STAGES, needed

# A manifest's timings (synthetic/<split>/manifest.json) say how fast it was made, not what was made:
# left out of its hash, so that the same config gives the same stamp.
VOLATILE_KEYS = frozenset({"seconds", "images_per_second"})
HASH_CHARS = 12
PNG_KEY = "Provenance"  # the PNG text chunk of every figure that holds provenance()
# Where results go is not what they are: left out of the provenance's config hash, so that the same
# preset run into two folders stamps its tables alike.
LOCATION_KEYS = frozenset({"results_dir"})


def git_commit() -> str:
    """The repository's checked-out commit (with '+dirty' when files differ), wherever the stage runs
    (Snakemake's --directory), or 'unknown' outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=10, cwd=REPO_ROOT).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, cwd=REPO_ROOT).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def data_manifests(cfg: Mapping, stage: str) -> dict[str, Path]:
    """The manifests of the data `stage` read: those of the data stages it needs (a stage that writes
    data declares them, pipelines/stages.py)."""
    found: dict[str, Path] = {}
    for name in needed(stage):
        found.update(STAGES[name].manifests(cfg))
    return found


def manifest_hash(path: Path) -> str:
    """A short sha256 of a manifest: JSON without its timings (VOLATILE_KEYS), other files byte for byte."""
    if not path.is_file():
        raise MofaError(f"{path}: data manifest missing; run the stage that writes it first")
    if path.suffix == ".json":  # a cut-short or edited one: named
        content = {k: v for k, v in io.read_json(path, "data manifest").items() if k not in VOLATILE_KEYS}
        data = json.dumps(content, sort_keys=True).encode()
    else:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise MofaError(f"{path}: cannot read ({exc.strerror})") from None
    return hashlib.sha256(data).hexdigest()[:HASH_CHARS]


def data_hashes(cfg: Mapping, stage: str) -> dict[str, str]:
    """{'synthetic/train': 'ab12...', ...} for the data `stage` read."""
    return {name: manifest_hash(path) for name, path in data_manifests(cfg, stage).items()}


def result_config_hash(cfg: Mapping) -> str:
    """The config hash that results are stamped with: the config without LOCATION_KEYS."""
    return config_hash({key: value for key, value in cfg.items() if key not in LOCATION_KEYS})


def provenance(cfg: Mapping, stage: str) -> str:
    """Where a result of `stage` came from, in one line (no timestamp: the same inputs give the same line)."""
    data = " ".join(f"{name}={digest}" for name, digest in data_hashes(cfg, stage).items()) or "none"
    return (f"preset {cfg['preset']}, config {result_config_hash(cfg)}, commit {git_commit()}, data {data}, "
            f"training precision {training_precision(cfg)}")


def training_precision(cfg: Mapping) -> str:
    """'fp32' or 'bf16': training.precision resolved on this machine for the config's device."""
    return resolve_precision(cfg["training"]["precision"], select_device(cfg["device"]))


def figure_metadata(cfg: Mapping, stage: str) -> dict[str, str]:
    """PNG text chunks for a figure of `stage` (pass as `metadata=` to the plotting functions)."""
    return {PNG_KEY: provenance(cfg, stage)}


def write_text(path: Path, text: str) -> Path:
    """Write a text file atomically and log it."""
    return wrote(io.write_text(path, text))


def write_table(frame: pd.DataFrame, csv_path: Path, md_path: Path, cfg: Mapping, title: str, *, stage: str) -> None:
    """Write `frame` as CSV (with a '# title; provenance' comment line first) and as a Markdown table;
    `stage` is the stage writing it (its name in pipelines/), whose data the stamp names."""
    stamp = provenance(cfg, stage)
    io.write_text(csv_path, f"# {title}; {stamp}\n" + frame.to_csv(index=False, float_format="%.4g"))
    io.write_text(md_path, f"**{title}**\n\n{frame.to_markdown(index=False, floatfmt='.4g')}\n\n_{stamp}_\n")
    wrote(csv_path)
    wrote(md_path)


def write_csv(frame: pd.DataFrame, csv_path: Path) -> None:
    """A plain CSV (e.g. per-image values), written atomically."""
    io.write_text(csv_path, frame.to_csv(index=False, float_format="%.6g"))
    wrote(csv_path)
