# The ops verbs of tentaculo. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help run test bench chaos migrate token lint up down logs smoke screenshots clean

help: ## list the verbs
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

run: $(STAMP) ## run the gateway on 127.0.0.1:8000 (HOST=..., PORT=...; embedded PostgreSQL/Redis unless configured)
	$(BIN)/tentaculo run $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

test: $(STAMP) ## run the test suite against real PostgreSQL and Redis (embedded when none is given) and Chromium
	@$(BIN)/python -m tests.browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP) ## measure the gateway against a bare aiohttp app; ends with the baseline table
	$(BIN)/python -m bench

chaos: $(STAMP) ## PostgreSQL and Redis faults under load, a stop with streams open: one table (SCENARIOS=... for some)
	$(BIN)/python -m bench.chaos $(SCENARIOS)

migrate: $(STAMP) ## apply pending database migrations
	$(BIN)/tentaculo migrate

token: $(STAMP) ## create a token: make token NAME=ops SCOPES=read,chat
	$(BIN)/tentaculo token create $(NAME) --scopes $(or $(SCOPES),read)

lint: $(STAMP) ## ruff and mypy
	@$(BIN)/python -c "import ruff, mypy" 2>/dev/null || $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,dev]'
	$(BIN)/ruff check tentaculo providers tests bench
	$(BIN)/mypy tentaculo providers

COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
COMPOSE_ARGS := -p vx11 -f compose/docker-compose.yml $(if $(SCALE),--profile scale)

up: ## start PostgreSQL, Redis and the gateway with compose (SCALE=1: two gateways behind nginx on :8080)
	@test -f compose/.env || (echo "copy compose/.env.example to compose/.env and set its secrets first" && exit 1)
	$(COMPOSE) $(COMPOSE_ARGS) up -d --build

down: ## stop the compose stack (volumes are kept)
	$(COMPOSE) $(COMPOSE_ARGS) down

logs: ## follow the compose stack's logs
	$(COMPOSE) $(COMPOSE_ARGS) logs -f --tail=100

smoke: $(STAMP) ## call every endpoint of a running gateway (URL=... or PORT=..., token from TENTACULO_ADMIN_TOKEN or .tentaculo/admin-token)
	$(BIN)/tentaculo smoke --url $(or $(URL),http://127.0.0.1:$(or $(PORT),8000))

# The console's browser tests; each saves a PNG of the views it opens when TENTACULO_SCREENSHOTS is set.
CONSOLE_TESTS ?= $(wildcard tests/test_console*.py)
SCREENSHOTS_DIR ?= docs/img

screenshots: $(STAMP) ## save a picture of each operator console view to docs/img (its browser tests)
	@$(BIN)/python -m tests.browser
	TENTACULO_SCREENSHOTS=$(SCREENSHOTS_DIR) $(BIN)/python -m pytest $(CONSOLE_TESTS) $(PYTEST_ARGS)

clean: ## remove the virtual env and local state (embedded databases, admin token)
	rm -rf $(VENV) .tentaculo
