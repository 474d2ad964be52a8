# `make demo` and `make test` create .venv themselves on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and torchvision must be a matching pair; override for another CUDA or CPU build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= dev,deploy,dali,video,pretrained,parquet,remote,ray,triton-client

.PHONY: demo test test-slow venv clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m lcie_fast demo

# Two passes: Triton's interpreter must be switched on before Triton is first imported.
# Tests marked slow (each about 20 s or more on 2 cores: the demo end to end, the CUDA build,
# real-photo parity...) are left to `make test-slow`, so that `make test` on a fresh clone stays
# under 15 minutes on the slowest 2-core machine seen (AVX2 only).
test: $(VENV)/.installed
	$(PY) -m ruff check lcie_fast tests benchmarks
	$(PY) -m pytest -q --fast
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m interpreter

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) build demo_out .pytest_cache
