"""What the workflow engines need before they start: the project's own config check (the messages of
`mofa` and the stage entry points, one line each) and the removal of a lock that a killed Snakemake
left behind.

    python -m pipelines._workflow --config config/ci.yaml [--set KEY=VALUE ...] [--unlock-stale]

checks the config (exit status 2 with one line on a problem) and, with --unlock-stale, unlocks the
working directory when Snakemake's lock is there but no Snakemake runs in it (`make reproduce` does
both before it starts Snakemake).
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from mofa.config import REPO_ROOT, load_config, results_dir
from mofa.errors import MofaError

LOCKS = Path(".snakemake") / "locks"


def check_results_folder(folder: Path) -> None:
    """A MofaError unless `folder` is, or can be made, a folder this process writes to (nothing is
    created: a dry run leaves no trace)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise MofaError(f"{existing}: is a file, but the results folder {folder} must be a folder there "
                        "(change results_dir or move the file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "read-only file system" if os.statvfs(existing).f_flag & os.ST_RDONLY else "permission denied"
        raise MofaError(f"{existing}: cannot write there ({why}), so results cannot go to {folder}")


def snakemake_overrides(entries: Mapping) -> dict:
    """`snakemake --config KEY=VALUE` entries as `--set` would read them: Snakemake types a top-level
    value itself (int, float, bool, else text), but reads a mapping or list value with YAML's BaseLoader,
    which leaves every entry inside it text (`training={batch_size: 2}` gives '2'); those are read as
    YAML here."""
    import yaml

    def typed(value):
        if isinstance(value, Mapping):
            return {key: typed(item) for key, item in value.items()}
        if isinstance(value, list):
            return [typed(item) for item in value]
        if isinstance(value, str):
            try:
                return yaml.safe_load(value)
            except yaml.YAMLError:
                return value
        return value

    return {key: typed(value) if isinstance(value, (Mapping, list)) else value for key, value in entries.items()}


def checked_config(files: Sequence[str | os.PathLike], overrides: Mapping | None = None) -> dict:
    """The validated config of these config files and `--config` overrides, as `mofa` loads it; a
    MofaError naming the file or key when a file is missing or malformed, a key unknown or a value
    wrong, or the results folder cannot be written."""
    cfg = load_config(list(files), dict(overrides or {}))
    check_results_folder(results_dir(cfg))
    return cfg


def snakemake_running(workdir: Path) -> bool:
    """Whether a process whose command line runs Snakemake, or a stage Snakemake started, has `workdir`
    as its working directory (read from /proc; True where there is no /proc, so that nothing is
    unlocked on a guess)."""
    proc = Path("/proc")
    if not (proc / "self" / "cwd").exists():
        return True
    workdir, me = workdir.resolve(), os.getpid()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:  # gone, or another user's
            continue
        if cwd == workdir and _runs_the_workflow(command):
            return True
    return False


def _runs_the_workflow(argv: list[bytes]) -> bool:
    """Snakemake (`snakemake ...`, `python .../snakemake ...`, `python -m snakemake ...`) or a stage it
    started (`python -m pipelines.<stage> ...`)."""
    names = [os.path.basename(a) for a in argv[:2]]
    module = argv[2] if len(argv) > 2 and argv[1] == b"-m" else b""
    return b"snakemake" in names or module == b"snakemake" or module.startswith(b"pipelines.")


def unlock_stale(workdir: Path, configfiles: Sequence[str], snakemake: Sequence[str]) -> bool:
    """`snakemake --unlock` where a lock is there and no Snakemake runs in `workdir` (a run killed with
    SIGKILL leaves its lock); returns whether it unlocked."""
    locks = workdir / LOCKS
    if not (locks.is_dir() and any(locks.iterdir())) or snakemake_running(workdir):
        return False
    args = [*snakemake, "--snakefile", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir), "--unlock",
            "--cores", "1", "--configfile", *configfiles]
    result = subprocess.run(args, cwd=workdir, capture_output=True, text=True)
    if result.returncode != 0:
        raise MofaError(f"{locks}: a lock left by a Snakemake run that is no longer running, and "
                        f"`{' '.join(args)}` failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    print(f"unlocked {workdir}: the lock of a Snakemake run that is no longer running", file=sys.stderr)
    return True


def main(argv: list[str] | None = None) -> int:
    # Imported here: the Snakefile imports this module, and pipelines._stage imports torch.
    from mofa.errors import ArgumentParser
    from pipelines._stage import parse_overrides

    parser = ArgumentParser(prog="python -m pipelines._workflow", description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", required=True, metavar="YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    parser.add_argument("--unlock-stale", action="store_true",
                        help="unlock the working directory when its Snakemake lock belongs to no live run")
    args = parser.parse_args(argv)
    try:
        checked_config(args.config, parse_overrides(args.overrides))
        if args.unlock_stale:
            unlock_stale(Path.cwd(), args.config, [sys.executable, "-m", "snakemake"])
    except MofaError as exc:
        print(f"mofa: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
