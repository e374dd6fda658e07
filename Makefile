PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# eventlet and setuptools warn on import about their own futures
export PYTHONWARNINGS := ignore::DeprecationWarning,ignore:pkg_resources is deprecated:UserWarning

.PHONY: run test bench servers browser deploy-tools venv lock

# the venv is rebuilt only when missing or older than the requirements
$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

servers: venv
	$(BIN)/python scripts/servers.py

# Debian's chromium for the browser tests (installed if missing, as root)
browser: venv
	$(BIN)/python scripts/browser.py

# kubectl (kustomize) and promtool for tests/deploy (installed if missing, as root)
deploy-tools: venv
	$(BIN)/python scripts/deploy_tools.py

run: servers
	$(BIN)/nameko run --config config.yml services.votes.service services.gateway.service

test: servers browser deploy-tools
	$(BIN)/python scripts/test.py

bench: servers
	$(BIN)/python -m bench

# the runtime closure of requirements.txt, pinned with hashes, for the image
lock: venv
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links --output-file requirements.lock requirements.txt
