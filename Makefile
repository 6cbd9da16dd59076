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
	touch $(STAMP)

install: $(STAMP)

# The main job: circuits in the two shipped toy models (trained here, mechanisms known; nothing is
# downloaded): IOI with EAP-IG, re-evaluated on other rows (seed 2); induction with ACDC.
# The IOI model was trained on the ioi task's seed-0 rows, so the job uses seeds 1 and 2.
run: install
	$(BIN)/circuitry discover --model toy:ioi --task ioi --n 100 --seed 1 --method eap-ig --top-n 30 \
		--out out/ioi.json
	$(BIN)/circuitry evaluate --model toy:ioi --task ioi --n 100 --seed 2 --circuit out/ioi.json --json
	$(BIN)/circuitry discover --model toy:induction --task induction --n 100 --seed 1 --method acdc --tau 0.01 \
		--out out/induction.json

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/bench_eap.py

clean:
	rm -rf $(VENV) .cache out
