# MoFA-Bench. `make reproduce` regenerates the results of the default preset (Snakemake);
# `make test` runs the tests. Both run `make setup` first, which sets up .venv once and again only
# when pyproject.toml changes.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mofa-setup-done
# Python 3.11: plain pip then takes torch 2.13.0 (pinned in pyproject.toml) as the local CPU wheel.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PRESET ?= default
CORES ?= all

.PHONY: help setup reproduce test clean

help:
	@echo "make reproduce   run the pipeline at the $(PRESET) preset (PRESET=ci|default|paper, CORES=N)"
	@echo "make test        run the tests"
	@echo "make setup       create .venv and install the project (both targets above do it first)"
	@echo "make clean       delete everything the pipeline wrote under results/"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@# Open3D's library links libusb-1.0, which slim Debian images lack.
	@if ! { ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null; } | grep -q 'libusb-1\.0'; then \
	  echo "Open3D needs libusb-1.0: installing the Debian package libusb-1.0-0"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq libusb-1.0-0; \
	fi
	@test -x $(BIN)/python || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet -e '.[pipeline,test]'
	@touch $@

reproduce: setup
	$(BIN)/snakemake --cores $(CORES) --configfile config/$(PRESET).yaml

test: setup
	$(BIN)/pytest

clean:
	find results -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
	rm -rf .snakemake
