# Spotify streams notebook series. GNU make; needs only python3 (3.11) on the PATH.
#   make run        run the whole series (DATA=path/to/file.csv OUT=build/run)
#   make test       lint (ruff) + tests + notebook validation (nbval)
# Every target that needs Python depends on `venv`, which creates .venv on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?=
OUT    ?= build/run
QUICK_OUT ?= build/quick

# --data is only passed when DATA is set; otherwise the driver picks
# data/spotify-2023.csv if present, else the synthetic sample.
RUN_ARGS = $(if $(DATA),--data "$(DATA)") --output "$(OUT)"

.DEFAULT_GOAL := help
.PHONY: help venv lock run quick predict test test-fast refresh-notebooks readme bench drift lab clean

help:
	@echo "make venv               create/refresh .venv (the lock requirements.txt + editable project)"
	@echo "make lock               regenerate requirements.txt from pyproject.toml (uv pip compile; LOCK_ARGS=--upgrade)"
	@echo "make run                run all notebooks -> $(OUT)/ (options: DATA=file.csv OUT=dir)"
	@echo "make quick              same as run, fast smoke settings (--quick) -> $(QUICK_OUT)/"
	@echo "make predict DATA=new.csv  predicted streams for new songs (ARGS='--inputs pre-release --age-days 30 --interval 0.8 -o out.csv')"
	@echo "make test               ruff check + pytest (unit tests and nbval on notebooks/)"
	@echo "make test-fast          development tier: ruff + unit tests (no nbval, no smoke run)"
	@echo "make refresh-notebooks  maintainer: re-execute notebooks/ in place on the real data file"
	@echo "make readme             regenerate the generated blocks of README.md and docs/*.md"
	@echo "make bench              measure speed and memory (writes reports/benchmark.json)"
	@echo "make drift              maintainer: measure drift across emulated CPUs (numpy, OpenBLAS, oneDNN) -> reports/drift.json"
	@echo "make lab                open JupyterLab in notebooks/"
	@echo "make clean              remove build/"

venv: $(STAMP)

# Re-installs only when requirements.txt or pyproject.toml changed since the last install.
# The stamp is written last, so a failed install is retried on the next run.
$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt -e .
	touch $(STAMP)

# requirements.txt is the lock: every package pinned, generated from pyproject.toml's ranges
# (runtime dependencies plus the `dev` extra) by uv, itself pinned in the lock. Versions already
# pinned are kept unless a range excludes them; LOCK_ARGS="--upgrade-package numpy" or
# LOCK_ARGS=--upgrade moves them. Needs only uv in .venv, not a working install of the lock.
LOCK_ARGS ?=
lock: $(BIN)/uv
	$(BIN)/uv pip compile --quiet pyproject.toml --extra dev --python $(BIN)/python \
		--custom-compile-command "make lock" -o requirements.txt $(LOCK_ARGS)

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install "$$(grep -m1 '^uv==' requirements.txt || echo uv)"

# The commands are the package's entry points ([project.scripts] in pyproject.toml), installed
# into .venv/bin by `make venv`; scripts/NAME.py runs the same code (python scripts/NAME.py).
run: venv
	$(BIN)/spotify-run $(RUN_ARGS)

# Smoke runs go to their own folder, never over a full run's outputs (build/run).
quick: venv
	$(BIN)/spotify-run $(if $(DATA),--data "$(DATA)") --output "$(QUICK_OUT)" --quick

# `spotify-predict --help` says more; it reads the series' saved models (skops files) trusting
# only the types the series saves, so use model files made by this series.
predict: venv
	@test -n "$(DATA)" || { echo "make predict needs DATA=path/to/new_songs.csv" >&2; exit 2; }
	$(BIN)/spotify-predict "$(DATA)" $(ARGS)

test: venv
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest

# Not a substitute for `make test`: the committed notebooks are not re-executed here.
test-fast: venv
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest tests --ignore=tests/test_series_run.py

# Refuses (exit 2, with instructions) unless data/spotify-2023.csv has the real sha256.
refresh-notebooks: venv
	$(BIN)/spotify-run --refresh --output "$(OUT)"
	$(BIN)/spotify-readme

# The tables of README.md and docs/*.md from reports/ (spotify_streams/commands/update_readme.py,
# BLOCKS); `$(BIN)/spotify-readme --check` only checks.
readme: venv
	$(BIN)/spotify-readme

bench: venv
	$(BIN)/spotify-bench
	$(BIN)/spotify-readme

# Runs the series once natively, once per emulated CPU (numpy at each dispatch level below this
# CPU's own, OpenBLAS as Sandybridge, oneDNN at AVX and SSE41) and once with another seed, into
# build/drift/ (docs/performance.md says how long a run takes); the largest drift sets the
# tolerances of spotify_streams/contract.py (reports/drift.json, docs/reproducibility.md), and a
# choice that moves fails the target.
# DRIFT_ARGS: --reuse keeps finished runs, --labels picks runs, --only 02,03 a partial measurement.
drift: venv
	$(BIN)/spotify-drift $(DRIFT_ARGS)
	$(BIN)/spotify-readme

lab: venv
	cd notebooks && ../$(BIN)/jupyter lab

clean:
	rm -rf build
