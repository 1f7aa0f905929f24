PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test test-fast fingerprint demo clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest tests -n 2

# The suite without the end-to-end trainings through mmengine's Runner.
test-fast: install
	$(BIN)/python -m pytest tests -n 2 -m "not slow"

# The training fingerprint of this checkout (docs/fingerprints.md).
fingerprint: install
	$(BIN)/python tools/fingerprint.py --out work_dirs/fingerprint/fingerprints.json

demo: install
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null && ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; fi
	$(BIN)/overhaul-det demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV)
