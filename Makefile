# medlrp: the two commands of the README, plus benchmarks and lint.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean chromium dicom3tools

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/medlrp demo --out demo-out

# The report test drives Debian's headless Chromium through Selenium. Install it only when it is missing
# and we are root (CI); otherwise leave the machine alone (the test then says what is missing).
chromium:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	  else \
	    echo "chromium/chromedriver missing and not root: the report test will fail (apt-get install chromium chromium-driver)"; \
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
