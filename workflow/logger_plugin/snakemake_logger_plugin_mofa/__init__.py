"""Snakemake's console output for MoFA-Bench: what Snakemake's default handler writes, except the errors
Snakemake raises while it reads a --configfile, which become the project's own one-line message, and
its traceback for a `--config` entry that is not KEY=VALUE (or whose KEY is dotted), which becomes one line.

Snakemake reads --configfile in its command line, before any workflow code runs, and reports a missing
file, a folder or a non-UTF-8 file with a Python traceback, and a malformed one in its own words; the
Snakefile's check (pipelines/_workflow.py) never gets to run. Snakemake's logger plugins are set up
before that point, so this handler, selected by the workflow profile (profiles/default), sees the error
and reads the config files again with mofa.config.load_config, whose one-line MofaError it prints:

    mofa: error: missing.yaml: cannot read config (No such file or directory)

Every other record goes through Snakemake's own ColorizingTextHandler, with the filter and formatter
Snakemake gives a plugin handler (its defaults), so the rest of the output is unchanged.
"""
from __future__ import annotations

import logging
import sys

from snakemake_interface_logger_plugins.base import LogHandlerBase
from snakemake_interface_logger_plugins.common import LogEvent

# What the error of Snakemake's config-file reading looks like: a traceback through its loader, or
# its WorkflowError for a file that is not a YAML/JSON mapping.
LOADER = "snakemake/common/configfile.py"
WORKFLOW_ERRORS = ("Config file is not valid JSON or YAML", "Config file must be given as JSON or YAML")
CONFIGFILE_FLAGS = ("--configfile", "--configfiles")
# Snakemake's parsers of `--config KEY=VALUE ...`: the pair's, which takes a target written after it for
# an entry, and the entries', which refuses a dotted KEY.
CONFIG_PARSERS = ("parse_key_value_arg", "in parse_config")


def configfiles(argv: list[str]) -> list[str]:
    """The files after --configfile/--configfiles in a Snakemake command line (`--configfile=F` too)."""
    files: list[str] = []
    taking = False
    for arg in argv:
        flag, eq, value = arg.partition("=")
        if flag in CONFIGFILE_FLAGS:
            taking = not eq
            files += [value] if eq else []
        elif arg.startswith("-"):
            taking = False
        elif taking:
            files.append(arg)
    return files


def is_configfile_error(record: logging.LogRecord) -> bool:
    """Whether `record` is Snakemake reporting that it could not read a --configfile."""
    if record.levelno < logging.ERROR or getattr(record, "event", None) != LogEvent.ERROR:
        return False
    text = record.getMessage()
    return LOADER in text.replace("\\", "/") or any(problem in text for problem in WORKFLOW_ERRORS)


def config_argument_message(record: logging.LogRecord) -> str | None:
    """One line for Snakemake's traceback of a `--config` entry that is not KEY=VALUE, or None."""
    text = record.getMessage()
    if record.levelno < logging.ERROR or not any(parser in text for parser in CONFIG_PARSERS):
        return None
    reason = [line for line in text.splitlines() if line.strip()][-1].removeprefix("ValueError: ")
    if "valid identifier" in reason:  # face_model.n_shape=10
        return (f"mofa: error: --config: {reason.rstrip('.')}; Snakemake takes top-level keys only: give a "
                "section as a mapping, e.g. --config 'face_model={n_shape: 10}'")
    return f"mofa: error: --config: {reason}; give KEY=VALUE entries, and any target before --config"


def project_message(files: list[str]) -> str | None:
    """The project's one-line message for these config files, or None where it finds no problem."""
    try:
        from mofa.config import load_config
        from mofa.errors import MofaError
    except ImportError:  # mofa not importable here: Snakemake's message stands
        return None
    from pathlib import Path

    from mofa.config import presets
    for name in files:  # a bare word: a preset's name, or a target written after --configfile
        if Path(name).suffix or len(Path(name).parts) > 1 or Path(name).exists():
            continue
        if name in presets():
            return (f"mofa: error: --configfile {name}: Snakemake reads files, not preset names: "
                    f"--configfile config/{name}.yaml (or make reproduce PRESET={name})")
        return (f"mofa: error: --configfile {name}: no such config file; Snakemake reads every word after "
                "--configfile as a config file: write targets before it (snakemake --cores all TARGET --configfile FILE)")
    try:
        load_config(files)
    except MofaError as exc:
        return f"mofa: error: {exc}"
    return None


class LogHandler(LogHandlerBase):
    def __post_init__(self) -> None:
        from snakemake.logging import ColorizingTextHandler
        self.console = ColorizingTextHandler(nocolor=self.common_settings.nocolor,
                                             stream=sys.stdout if self.common_settings.stdout else sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        message = config_argument_message(record)
        if message is None and is_configfile_error(record):
            message = project_message(configfiles(sys.argv[1:]))
        if message:
            print(message, file=sys.stderr, flush=True)
            return
        self.console.setFormatter(self.formatter)
        self.console.emit(record)

    @property
    def writes_to_stream(self) -> bool:
        return True  # in place of Snakemake's default console handler

    @property
    def writes_to_file(self) -> bool:
        return False

    @property
    def has_filter(self) -> bool:
        return False  # Snakemake attaches its default filter

    @property
    def has_formatter(self) -> bool:
        return False  # and its default formatter

    @property
    def needs_rulegraph(self) -> bool:
        return False
