# One-command entry points. `make test` and `make demo` run `setup` themselves,
# so each works on a fresh machine; every step is idempotent.
SHELL := /bin/bash
PYTHON ?= python
DOWNLINK := $(PYTHON) -m downlink
# root installs directly; anyone else through sudo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the project needs, installed only when their binary is missing
APT_CHECKS := \
	"test -x /usr/sbin/mosquitto:mosquitto" \
	"command -v prometheus:prometheus" \
	"command -v promtool:prometheus" \
	"ls /usr/lib/postgresql/*/bin/postgres:postgresql" \
	"command -v java:default-jre-headless" \
	"command -v mvn:maven" \
	"command -v docker-compose:docker-compose" \
	"test -x /usr/bin/chromium:chromium" \
	"command -v npm:npm"

.PHONY: setup apt pip npm fetch test demo bench stack-up stack-down clean

setup: apt pip npm fetch

apt:
	@missing=""; \
	for check in $(APT_CHECKS); do \
		probe="$${check%:*}"; pkg="$${check##*:}"; \
		eval "$$probe" >/dev/null 2>&1 || case " $$missing " in *" $$pkg "*) ;; *) missing="$$missing $$pkg";; esac; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		policy=0; \
		if [ ! -e /usr/sbin/policy-rc.d ]; then \
			printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee /usr/sbin/policy-rc.d >/dev/null && $(SUDO) chmod +x /usr/sbin/policy-rc.d && policy=1; \
		fi; \
		status=0; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing || status=$$?; \
		if [ $$policy = 1 ]; then $(SUDO) rm -f /usr/sbin/policy-rc.d; fi; \
		exit $$status; \
	fi
# (policy-rc.d keeps apt from starting system mosquitto/postgresql services on our ports)

pip:
	PIP_ROOT_USER_ACTION=ignore $(PYTHON) -m pip install -q -e '.[dev]'

# the dashboard's JavaScript (Open MCT, mqtt.js) exactly as pinned by its lockfile; redone only when it changes
DASHBOARD_WEB := consumers/dashboard/web
npm:
	@stamp="$(DASHBOARD_WEB)/node_modules/.lock-sha256"; want="$$(sha256sum $(DASHBOARD_WEB)/package-lock.json | cut -d' ' -f1)"; \
	if [ "$$(cat $$stamp 2>/dev/null)" != "$$want" ]; then \
		(cd $(DASHBOARD_WEB) && npm ci --no-audit --no-fund --loglevel=error) && echo "$$want" > $$stamp; \
	fi

fetch:
	$(DOWNLINK) stack fetch

# Runs the whole suite against a real stack: reuses one already healthy, else
# starts it and tears it down afterwards, even when tests fail (pytest's exit code is kept).
test: setup
	@if $(DOWNLINK) stack status >/dev/null 2>&1; then \
		echo "reusing the running stack"; started=0; \
	else \
		$(DOWNLINK) stack up || exit $$?; started=1; \
	fi; \
	status=0; $(PYTHON) -m pytest -q --durations=15 $(PYTEST_ARGS) || status=$$?; \
	if [ $$started = 1 ]; then $(DOWNLINK) stack down || true; fi; \
	exit $$status

demo: setup
	bash scripts/demo.sh

bench: setup
	@if $(DOWNLINK) stack status >/dev/null 2>&1; then \
		started=0; \
	else \
		$(DOWNLINK) stack up || exit $$?; started=1; \
	fi; \
	status=0; $(PYTHON) -m benchmarks.collect || status=$$?; \
	if [ $$started = 1 ]; then $(DOWNLINK) stack down || true; fi; \
	exit $$status

stack-up:
	$(DOWNLINK) stack up

stack-down:
	$(DOWNLINK) stack down

# Stops the stack of this checkout and removes its state; the Kafka jar cache
# (~/.cache/downlink) is kept because it is shared by every checkout.
clean:
	-$(DOWNLINK) stack down
	rm -rf .downlink build .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
