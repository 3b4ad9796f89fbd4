# tiny-slm: `make demo` runs the main job on the offline default, `make test` runs the tests.
# Both first run `make setup`, which is idempotent: a venv with the CPU torch wheel, the package
# (editable, with dev extras) and the offline default model, converted once to safetensors.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TINYSLM_DATA_DIR ?= ../shared/data
export TINYSLM_DATA_DIR
DEMO_OUT ?= runs/quick

.PHONY: setup demo test test-fast lint clean

setup: $(VENV)/.installed
	@$(BIN)/tiny-slm models install smollm2-135m-instruct

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/tiny-slm run configs/quick.yaml --output $(DEMO_OUT)

test: setup lint
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
