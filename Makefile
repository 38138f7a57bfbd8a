# medlrp: the two commands of the README, plus benchmarks and lint.
# `make demo` installs medlrp and its run-time dependencies only; `make test` adds the dev extra (the
# reference libraries the tests compare with: zennit, Captum, Quantus, LXT, timm, MONAI ...).
PY ?= python3
PIP_ARGS ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: demo test bench lint clean chromium dicom3tools

$(VENV)/.venv-created:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	touch $@

$(DEMO_STAMP): pyproject.toml | $(VENV)/.venv-created
	$(BIN)/python -m pip install -q $(PIP_ARGS) -e .
	touch $(DEMO_STAMP)

$(STAMP): pyproject.toml | $(VENV)/.venv-created
	$(BIN)/python -m pip install -q $(PIP_ARGS) -e '.[dev]'
	touch $(STAMP) $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/medlrp demo --out demo-out

# The report test drives Debian's headless Chromium through Selenium. Install it only when it is missing
# and we are root (CI); otherwise leave the machine alone (the test then says what is missing).
chromium:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	      chromium chromium-driver; \
	  else \
	    echo "chromium/chromedriver missing and not root: the report test will fail" \
	      "(apt-get install --no-install-recommends chromium chromium-driver)"; \
	  fi; \
	fi

# The DICOM output test validates every object with dciodvfy (Debian package dicom3tools): installed the
# same way, only when missing and root.
dicom3tools:
	@if ! command -v dciodvfy >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends dicom3tools; \
	  else \
	    echo "dciodvfy missing and not root: the DICOM output test will fail (apt-get install dicom3tools)"; \
	  fi; \
	fi

test: $(STAMP) chromium dicom3tools
	$(BIN)/python -m ruff check src tests benchmarks
	$(BIN)/python -m pytest -n 2 --dist loadfile -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/python -m ruff check src tests benchmarks
	$(BIN)/python -m ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) demo-out .pytest_cache
