PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test demo clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest tests -n 2

demo: install
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null && ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; fi
	$(BIN)/overhaul-det demo

clean:
	rm -rf $(VENV)
