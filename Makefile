# MoFA-Bench. `make reproduce` regenerates the results of the default preset (Snakemake);
# `make test` runs the tests. Both run `make setup` first, which sets up .venv once and again only
# when pyproject.toml changes. `make test-cluster` runs the SLURM test (tests/test_slurm.py), which
# takes longer than the rest of the suite; .ci/run runs it after `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mofa-setup-done
# Python 3.11: plain pip then takes torch 2.13.0 (pinned in pyproject.toml) as the local CPU wheel.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PRESET ?= default
CONFIG ?= config/$(PRESET).yaml
CORES ?= all

.PHONY: help setup reproduce test test-cluster dvc.yaml clean

help:
	@echo "make reproduce   run the pipeline at the $(PRESET) preset (PRESET=ci|default|paper or CONFIG=file.yaml, CORES=N)"
	@echo "make test        run the tests"
	@echo "make test-cluster  run the ci preset on a one-node SLURM cluster started here, against a local run"
	@echo "make setup       create .venv and install the project (both targets above do it first)"
	@echo "make dvc.yaml    write dvc.yaml from the stage declarations (pipelines/stages.py)"
	@echo "make clean       delete everything the pipeline wrote under results/"

setup: $(STAMP)

PLUGIN := workflow/logger_plugin

$(STAMP): pyproject.toml $(PLUGIN)/pyproject.toml $(PLUGIN)/snakemake_logger_plugin_mofa/__init__.py
	@# Shared libraries that slim Debian images lack: Open3D links libusb-1.0; the OpenCV wheel that
	@# mediapipe requires (opencv-contrib-python, not headless) links libGL and GLib. The report's browser
	@# test (tests/test_report.py) drives headless Chromium through chromedriver. The SLURM test
	@# (tests/test_slurm.py) runs munged, slurmctld and slurmd from slurm-wlm, with a configuration of its own.
	@missing=""; libs="$$( { ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null; } )"; \
	for pair in libusb-1.0.so.0:libusb-1.0-0 libGL.so.1:libgl1 libglib-2.0.so.0:libglib2.0-0; do \
	  echo "$$libs" | grep -q "$${pair%%:*}" || missing="$$missing $${pair##*:}"; \
	done; \
	for pair in chromium:chromium chromedriver:chromium-driver slurmctld:slurm-wlm; do \
	  { command -v "$${pair%%:*}" || [ -x "/usr/sbin/$${pair%%:*}" ]; } >/dev/null || missing="$$missing $${pair##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages the wheels and tests need:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@test -x $(BIN)/python || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet -e '.[pipeline,test,cluster]'
	@# Snakemake lists logger plugins among installed top-level modules, which an editable install hides:
	@# the workflow profile's logger (one-line config errors) is a package of its own, installed as one.
	$(BIN)/python -m pip install --quiet ./$(PLUGIN)
	@rm -rf $(PLUGIN)/build $(PLUGIN)/*.egg-info
	@touch $@

# The config is checked first (Snakemake reads a --configfile before the workflow's own check, and
# reports a missing or malformed one in its own words); a lock left by a killed run is released; the
# workflow profile (profiles/default) reruns a stage the kill left incomplete, and its training resumes.
reproduce: setup
	$(BIN)/python -m pipelines._workflow --config "$(CONFIG)" --unlock-stale
	$(BIN)/snakemake --cores $(CORES) --configfile "$(CONFIG)"

test: setup
	$(BIN)/pytest -m "not cluster"

test-cluster: setup
	$(BIN)/pytest -m cluster -rP tests/test_slurm.py

# Generated, and committed for `dvc repro`; tests/test_workflow.py fails when it is not current.
dvc.yaml: setup
	$(BIN)/python -m pipelines.dvc_yaml

clean:
	find results -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
	rm -rf .snakemake
