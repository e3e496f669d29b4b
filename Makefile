# The two commands that matter: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RESULTS := var/test-results
export SDE_TEST_POSTGRES_URL ?= postgresql+psycopg2://sde:sde@127.0.0.1:5432/sde_test

.PHONY: evidence demo test test-unit test-docker test-security lint images system venv bench clean-demo

$(STAMP): pyproject.toml hatch_build.py sde_spawner/datasets/_pseudonym_batch.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

system:
	bash scripts/ensure-system.sh

images: venv system
	IMAGES="notebook hub postgres" PYTHON=$(CURDIR)/$(PY) bash scripts/build-images.sh

## make demo: the whole system on http://127.0.0.1:8000 (log in as alice / demo)
demo: venv system
	PYTHON=$(CURDIR)/$(PY) bash scripts/build-images.sh
	$(VENV)/bin/sde-admin --db sqlite:///$(CURDIR)/var/demo/registry.sqlite demo-seed var/demo/data
	SDE_DEMO=1 SDE_DEMO_PASSWORD=$${SDE_DEMO_PASSWORD:-demo} SDE_PUBLIC_BIND=$${SDE_PUBLIC_BIND:-http://127.0.0.1:8000} \
		SDE_STATE_DIR=var/demo PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/jupyterhub -f jupyterhub_config.py

## make test: every tier: lint, unit, then docker, security and browser against a real engine
test: venv
	bash scripts/ensure-system.sh --test
	IMAGES="notebook hub postgres" PYTHON=$(CURDIR)/$(PY) bash scripts/build-images.sh
	$(VENV)/bin/ruff check .
	rm -rf $(RESULTS) && mkdir -p $(RESULTS)
	rc=0; \
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest -p no:cacheprovider \
		--junitxml=$(RESULTS)/unit.xml tests/unit || rc=$$?; \
	if [ $$rc -eq 0 ]; then PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest -p no:cacheprovider \
		--junitxml=$(RESULTS)/system.xml tests/docker tests/security tests/swarm tests/browser || rc=$$?; fi; \
	$(MAKE) --no-print-directory evidence || echo "evidence report not written"; \
	exit $$rc

## make evidence: the Five Safes / SATRE report (var/evidence/index.html) from the last make test.
## Its live facts come from a demo registry seeded for the purpose; on a deployment run
## `sde-admin --db URL evidence --junit FILE... --out DIR` against the real registry.
evidence: venv
	rm -rf var/evidence-registry && mkdir -p var/evidence-registry
	$(VENV)/bin/sde-admin --db sqlite:///$(CURDIR)/var/evidence-registry/registry.sqlite \
		demo-seed var/evidence-registry/data > /dev/null
	SDE_STATE_DIR=var/evidence-registry $(VENV)/bin/sde-admin \
		--db sqlite:///$(CURDIR)/var/evidence-registry/registry.sqlite \
		evidence $(patsubst %,--junit %,$(wildcard $(RESULTS)/*.xml)) --out var/evidence

test-unit: venv
	$(PY) -m pytest -q tests/unit

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean-demo:
	rm -rf var/demo
