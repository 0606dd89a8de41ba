# Both entry points build the virtual environment they need. torch==2.13.0 is installed first so that pip takes
# the CPU wheel instead of pulling several GB of CUDA.
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# lmms-eval for the plugin's end-to-end test, without its ~50 requirements (its wheel requires torchvision, which
# does not import beside the CPU torch wheel; its core does not need it): only what its command line imports. Its
# evaluator imports filelock._api, which filelock 4.3 removed.
LMMS_EVAL := lmms-eval==0.7.3
LMMS_EVAL_CORE := loguru sacrebleu evaluate tenacity pytz pytablewriter "filelock<4.3"

.PHONY: demo test test-fast bench bench-gpu clean

$(STAMP): setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PYTHON) -m vtimellm_hf.demo --output runs/demo

# The tests also cover the web demo (the [app] extra, and selenium of [dev]), the lmms-eval plugin, and decord (the
# [decord] extra), whose frames they compare with PyAV's
$(TEST_STAMP): $(STAMP) Makefile
	$(PYTHON) -m pip install --quiet -e ".[dev,app,decord]"
	$(PYTHON) -m pip install --quiet --no-deps $(LMMS_EVAL)
	$(PYTHON) -m pip install --quiet --no-warn-conflicts $(LMMS_EVAL_CORE)
	touch $(TEST_STAMP)

test: $(TEST_STAMP)
	$(PYTHON) -m pytest -q

test-fast: $(TEST_STAMP)
	$(PYTHON) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PYTHON) bench/run_all.py

bench-gpu: $(STAMP)
	$(PYTHON) bench/run_gpu.py

clean:
	rm -rf $(VENV) runs .pytest_cache
