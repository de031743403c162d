# The two commands a newcomer needs:
#   make demo   set up .venv if missing, then run the offline end-to-end demo (report in results/demo/)
#   make test   set up .venv if missing, then run the test suite
VENV ?= .venv
PYTHON := $(VENV)/bin/python
DEMO_ARGS ?=

.PHONY: setup demo test lint benchmark

setup:
	@bash scripts/setup_env.sh $(VENV)

demo: setup
	$(PYTHON) -m flowprior_plugin.tools.demo $(DEMO_ARGS)

test: setup
	$(PYTHON) -m pytest -q

lint: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/pre-commit run --all-files

benchmark: setup
	$(PYTHON) -m flowprior_plugin.tools.benchmark
