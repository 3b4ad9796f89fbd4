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
# Extra `tiny-slm export` flags for edge-demo, e.g. --threads 1 while another job holds a core: llama.cpp's
# worker threads spin-wait, so on an oversubscribed CPU its default of every core decodes several times slower.
EXPORT_FLAGS ?=
# llama-cpp-python (the edge extra) compiles llama.cpp: only the library this package loads, for this CPU.
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=ON

.PHONY: setup setup-edge demo edge-demo test test-fast lint clean

setup: $(VENV)/.installed
	@$(BIN)/tiny-slm models install smollm2-135m-instruct

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

setup-edge: $(VENV)/.installed-edge

$(VENV)/.installed-edge: $(VENV)/.installed
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install -q -e '.[dev,edge]'
	touch $@

demo: setup
	$(BIN)/tiny-slm run configs/quick.yaml --output $(DEMO_OUT)

# The quick study's trained models on device: each exported to q8_0 and q4_k_m, scored by llama.cpp on the
# same problems, then the report with its on-device table.
edge-demo: demo setup-edge
	for m in full lora dora; do \
		$(BIN)/tiny-slm export $(DEMO_OUT)/smollm2-135m-instruct/$$m/seed1234 --quant q8_0,q4_k_m --score $(EXPORT_FLAGS) || exit 1; \
	done
	$(BIN)/tiny-slm-report $(DEMO_OUT) --output $(DEMO_OUT)/report

test: setup setup-edge lint
	$(BIN)/python -m pytest -q

test-fast: setup setup-edge
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
