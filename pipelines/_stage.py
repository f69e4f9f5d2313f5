"""What every stage entry point shares: the command line, logging, timing and result files."""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from mofa import io
from mofa.config import REPO_ROOT, config_hash, load_config, results_dir, select_device, writable_folder
from mofa.errors import ArgumentParser, MofaError, Terminated, terminate_as_interrupt
from mofa.training import distributed as ddp
from pipelines.stages import source_files

log = logging.getLogger("mofa.stage")


def parse_args(description: str, argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", action="append", required=True, metavar="PRESET_OR_YAML",
                        help="preset name (ci, default, paper) or config file; repeat to merge, later wins")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override one key, e.g. face_model.n_shape=10 (the value is read as YAML)")
    parser.add_argument("--log", type=Path, metavar="FILE", help="also write the log to this file")
    return parser.parse_args(argv)


def parse_overrides(pairs: list[str]) -> dict:
    """['face_model.n_shape=10'] -> {'face_model.n_shape': 10}"""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise MofaError(f"--set {pair}: expected KEY=VALUE, e.g. face_model.n_shape=10")
        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise MofaError(f"--set {pair}: the value is not valid YAML ({problem})") from None
    return overrides


def setup_logging(log_file: Path | None = None) -> None:
    """Log to stderr and, when given, to `log_file` (truncated: one run per file). Under torchrun
    only rank 0 logs information and writes the file; the other ranks log warnings and errors."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None and ddp.is_main():
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.FileHandler(log_file, mode="w"))
        except OSError as exc:
            raise io.write_error(log_file, exc) from None
    logging.basicConfig(level=logging.INFO if ddp.is_main() else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", handlers=handlers, force=True)


@contextmanager
def timed(what: str) -> Iterator[dict]:
    """Log how long the block took; the yielded dict gets 'seconds' when it ends."""
    timing: dict = {}
    start = time.perf_counter()
    try:
        yield timing
    finally:
        timing["seconds"] = time.perf_counter() - start
        log.info("%s: %.2f s", what, timing["seconds"])


def _size(path: Path) -> str:
    n = path.stat().st_size
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def wrote(path: Path) -> Path:
    log.info("wrote %s (%s)", path, _size(path))
    return path


def write_json(path: Path, data: Mapping) -> Path:
    """Write `data` as indented JSON (keys sorted) atomically and log it."""
    return wrote(io.write_json(path, data))


def code_hash(sources: Iterable[str]) -> str:
    """A short sha256 of the code a stage runs (its sources, by path and content): a training run's key
    holds it, so that an edit to the code starts training over while a rerun of the same code resumes."""
    digest = hashlib.sha256()
    for path in source_files(sources):
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def save_trained_network(network, losses, weights: Path, curve: Path, what: str, loss_name: str) -> None:
    """A trained baseline network's state dict and its per-iteration loss curve (iteration, loss),
    both written atomically, and the first and last ten iterations' mean loss in the log."""
    io.torch_save(network.state_dict(), weights)
    frame = pd.DataFrame({"iteration": np.arange(1, len(losses) + 1), "loss": losses})
    io.write_text(curve, frame.to_csv(index=False, float_format="%.6g"))
    log.info("%s %s loss: %.4g (first 10 iterations) -> %.4g (last 10)", what, loss_name,
             np.mean(losses[:10]), np.mean(losses[-10:]))


def publish(source: Path, target: Path) -> Path:
    """Make `target` a hard link to `source` (a copy across file systems): a stable path for a file
    in a cache keyed by options, without a second copy on disk."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
    except OSError as exc:
        raise io.write_error(target, exc) from None
    try:
        os.link(source, target)
    except OSError:
        io.copy_file(source, target)  # never a cut-short copy under the final name (a full disk)
    return wrote(target)


def main(stage: str, run: Callable[[dict], Mapping], description: str, argv: list[str] | None = None,
         distributed: bool = False) -> int:
    """Command-line entry of a stage: parse, set up logging, load the config, run, report.

    distributed: the stage trains on the config's `processes`: with N > 1 and no launcher around it,
    it runs itself again under `torchrun --standalone --nproc-per-node N` and returns that exit
    status; under torchrun every process runs it and rank 0 alone writes (`mofa.training.distributed`).
    A MofaError ends the stage with its one-line message and exit status 2 (as the `mofa` command does).
    """
    argv = sys.argv[1:] if argv is None else argv
    argv = argv[1:] if argv[:1] == ["--"] else argv  # as a torchrun that keeps the `--` of relaunch_command passes it
    args = parse_args(description, argv, prog=f"python -m pipelines.{stage}")
    try:
        setup_logging(args.log)
    except MofaError as exc:
        setup_logging(None)
        log.error("stage %s failed: --log %s", stage, exc)
        return 2
    try:
        cfg = load_config(args.config, parse_overrides(args.overrides))
        if ddp.launched_processes() > 1 and not distributed:
            raise MofaError(f"stage {stage} runs in one process: start it without torchrun")
        if distributed and cfg["processes"] > 1 and ddp.launched_processes() == 1:
            setup_logging(None)  # rank 0 of the relaunched stage writes the log file
            return ddp.relaunch(cfg["processes"], f"pipelines.{stage}", argv)
        log.info("stage %s: config %s (preset %s, hash %s)", stage, " + ".join(args.config), cfg["preset"],
                 config_hash(cfg))
        writable_folder(results_dir(cfg))
        if distributed:
            ddp.init(select_device(cfg["device"]))
        with terminate_as_interrupt(), timed(f"stage {stage}"):
            run(cfg)
    except MofaError as exc:
        log.error("stage %s failed: %s", stage, exc)
        return 2
    except OSError as exc:  # one the stage did not turn into a MofaError: still one line, naming the file
        where = f"{exc.filename}: " if exc.filename else ""
        log.error("stage %s failed: %s%s", stage, where, exc.strerror or exc)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C (Snakemake passes it on) or SIGTERM: what was written whole stays, nothing partial
        terminated = isinstance(exc, Terminated)
        log.error("stage %s %s", stage, "terminated (SIGTERM)" if terminated else "interrupted")
        return 128 + signal.SIGTERM if terminated else 130
    except Exception:
        log.exception("stage %s failed", stage)  # a bug: the traceback, also in the stage's own log
        return 1
    finally:
        ddp.shutdown()
    return 0
