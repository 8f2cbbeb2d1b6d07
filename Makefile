# make install | make demo | make test — all inside .venv, on a fresh machine with only Python 3.11.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
CONSTRAINTS := $(VENV)/torch-constraint.txt

.PHONY: install demo test clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Torch goes in first (only if absent) and is then pinned by a constraints file, so no dependency
# resolution can pull a second, different torch build.
install: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==$(TORCH_VERSION)"
	@$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(CONSTRAINTS)
	$(PY) -m pip install -c $(CONSTRAINTS) -e ".[dev]"

demo: install
	$(VENV)/bin/distillscope demo

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
