# make test  -- create .venv if missing, install adder-sweep with its dev extra (and, as root, the system packages
#              some tests need: tests/sysdeps.sh), run the suite
# make sweep -- install, then run search_spaces/quick.yaml on an embedded local Ray and print the result
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch>=2.4
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: install sysdeps test sweep bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

sysdeps:
	@tests/sysdeps.sh

test: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q -rs --durations=25 $(PYTEST_ARGS)

sweep: $(STAMP)
	$(BIN)/adder-sweep sweep search_spaces/quick.yaml

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache
