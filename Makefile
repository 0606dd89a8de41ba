# Both entry points build the virtual environment they need. torch==2.13.0 is installed first so that pip takes
# the CPU wheel instead of pulling several GB of CUDA.
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench bench-gpu clean

$(STAMP): setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PYTHON) -m vtimellm_hf.demo --output runs/demo

test: $(STAMP)
	$(PYTHON) -m pytest -q

test-fast: $(STAMP)
	$(PYTHON) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PYTHON) bench/run_all.py

bench-gpu: $(STAMP)
	$(PYTHON) bench/run_gpu.py

clean:
	rm -rf $(VENV) runs .pytest_cache
