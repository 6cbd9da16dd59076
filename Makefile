# Everything installs into .venv from the project's own files; nothing by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
EXAMPLE := .cache/example

.PHONY: install run test bench clean

# torch is pinned here: a bare `torch` requirement on Linux resolves to a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The main job: discover a circuit on the example model, then re-evaluate the circuit file.
run: install
	$(BIN)/python scripts/make_example.py --out $(EXAMPLE)
	$(BIN)/circuitry discover --model $(EXAMPLE)/model --task $(EXAMPLE)/ioi.jsonl --method eap-ig \
		--top-n 50 --out out/circuit.json
	$(BIN)/circuitry evaluate --model $(EXAMPLE)/model --task $(EXAMPLE)/ioi.jsonl --circuit out/circuit.json --json

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/bench_eap.py

clean:
	rm -rf $(VENV) .cache out
