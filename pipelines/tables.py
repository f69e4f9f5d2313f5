"""Result tables: CSV + Markdown, each stamped with where it came from (commit, config hash)."""
from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from mofa.config import config_hash
from pipelines._stage import wrote


def git_commit() -> str:
    """The checked-out commit (with '+dirty' when files differ), or 'unknown' outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(cfg: Mapping) -> str:
    return f"preset {cfg['preset']}, config {config_hash(cfg)}, commit {git_commit()}"


def _atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_table(frame: pd.DataFrame, csv_path: Path, md_path: Path, cfg: Mapping, title: str) -> None:
    """Write `frame` as CSV (with a '# provenance' comment line first) and as a Markdown table."""
    stamp = provenance(cfg)
    _atomic_text(csv_path, f"# {title}; {stamp}\n" + frame.to_csv(index=False, float_format="%.4g"))
    _atomic_text(md_path, f"**{title}**\n\n{frame.to_markdown(index=False, floatfmt='.4g')}\n\n_{stamp}_\n")
    wrote(csv_path)
    wrote(md_path)
