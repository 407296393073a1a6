# Two one-line commands for a fresh clone (README.md, "Quick start"):
#
#   make demo    create .venv, install torch==2.13.0 then the distributions the demo needs, run `appa demo`
#   make test    create .venv, install every distribution with the dev extra, run the test command of .ci/run
#   make docs    the same environment; build the documentation site with the API reference (mkdocs --strict)
#
# The install and test lines are the README's explicit steps, line for line (tests/test_cli.py checks it).
# Overrides: VENV=/some/env (another environment), PYTHON=python3.11, DEMO_ARGS="--members 4 --steps 8".
# Each install runs once per environment (stamp files in the environment); `make clean-venv` removes it.

PYTHON ?= python3
VENV ?= .venv
DEMO_ARGS ?=
ACTIVATE = . $(VENV)/bin/activate

.PHONY: demo test docs install-demo install-dev clean-venv

demo: $(VENV)/.appa-demo-installed
	$(ACTIVATE) && appa demo $(DEMO_ARGS)

test: $(VENV)/.appa-dev-installed
	$(ACTIVATE) && python -m pytest -q tests operators plugins

docs: $(VENV)/.appa-dev-installed
	$(ACTIVATE) && mkdocs build --strict

install-demo: $(VENV)/.appa-demo-installed
install-dev: $(VENV)/.appa-dev-installed

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.appa-demo-installed: $(VENV)/bin/activate
	$(ACTIVATE) && pip install torch==2.13.0
	$(ACTIVATE) && pip install -e . -e operators/stations -e operators/satellite -e operators/fields -e plugins/workflows
	touch $@

$(VENV)/.appa-dev-installed: $(VENV)/bin/activate
	$(ACTIVATE) && pip install torch==2.13.0
	$(ACTIVATE) && pip install -e '.[dev]' -e operators/stations -e operators/satellite -e operators/fields -e plugins/workflows -e plugins/naturerun -e plugins/template
	touch $@ $(VENV)/.appa-demo-installed

clean-venv:
	rm -rf $(VENV)
