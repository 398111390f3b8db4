# The ops verbs of tentaculo. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help run test bench migrate token lint clean

help: ## list the verbs
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

run: $(STAMP) ## run the gateway on 127.0.0.1:8000 (embedded PostgreSQL/Redis unless configured)
	$(BIN)/tentaculo run

test: $(STAMP) ## run the test suite against real PostgreSQL and Redis (embedded when none is given)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP) ## measure the gateway against a bare aiohttp app and print ratios
	$(BIN)/python -m bench

migrate: $(STAMP) ## apply pending database migrations
	$(BIN)/tentaculo migrate

token: $(STAMP) ## create a token: make token NAME=ops SCOPES=read,chat
	$(BIN)/tentaculo token create $(NAME) --scopes $(or $(SCOPES),read)

clean: ## remove the virtual env and local state (embedded databases, admin token)
	rm -rf $(VENV) .tentaculo
