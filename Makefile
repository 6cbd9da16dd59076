# Everything installs into .venv from the project's own files; nothing by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test bench clean

# torch is pinned here: a bare `torch` requirement on Linux resolves to a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	@# the viewer's browser tests drive the distribution's chromium (never a browser fetched by a test
	@# tool); best effort: without root or the registry they skip and say why
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 || true
	touch $(STAMP)

install: $(STAMP)

# The main job: `circuitry demo` on the two shipped toy models (trained here, mechanisms known; nothing
# is downloaded): it starts the service in-process, submits an induction job and an IOI job over HTTP,
# follows them, labels the circuits offline, prints a summary and writes the viewer pages and the plot.
run: install
	$(BIN)/circuitry demo --out out/demo

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/bench_eap.py

clean:
	rm -rf $(VENV) .cache out
