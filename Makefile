# make test  -- create .venv if missing, install adder-sweep with its dev extra (and, as root, the system packages
#              some tests need: tests/sysdeps.sh), build .venv-mlflow (the MLflow server of tests/test_tracking.py),
#              run the suite
# make sweep -- install, then run search_spaces/quick.yaml on an embedded local Ray and print the result
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch>=2.4
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
# The MLflow tracking server the tests run has a venv of its own: the full mlflow pins pyarrow < 26, older than the
# project's; the project itself only needs the client (mlflow-skinny, extra `tracking`).
MLFLOW_VENV   ?= .venv-mlflow
MLFLOW_SERVER ?= mlflow==3.17.2
MLFLOW_STAMP   = $(MLFLOW_VENV)/.installed

.PHONY: install mlflow-server sysdeps test sweep bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

$(MLFLOW_STAMP):
	$(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/pip install -q --upgrade pip
	$(MLFLOW_VENV)/bin/pip install -q "$(MLFLOW_SERVER)"
	touch $(MLFLOW_STAMP)

mlflow-server: $(MLFLOW_STAMP)

sysdeps:
	@tests/sysdeps.sh

test: $(STAMP) sysdeps $(MLFLOW_STAMP)
	$(BIN)/python -m pytest -q -rs --durations=25 $(PYTEST_ARGS)

sweep: $(STAMP)
	$(BIN)/adder-sweep sweep search_spaces/quick.yaml

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) $(MLFLOW_VENV) .pytest_cache
