# virtnet — see README.md. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VIRTNET := $(VENV)/bin/virtnet
SEED := examples/net-eth-unmanaged-tap.xml
# Debian packages the tests drive for real: QEMU (and its bridge helper), qemu-img, passt, libvirt's
# virt-xml-validate, iproute2, setcap.
APT_PACKAGES := qemu-system-x86 qemu-utils passt libvirt-clients libxml2-utils iproute2 libcap2-bin
APT_PROBES := /usr/bin/qemu-system-x86_64 /usr/bin/qemu-img /usr/bin/passt /usr/bin/virt-xml-validate /usr/bin/xmllint /usr/sbin/ip /usr/sbin/setcap
# The tests also run a current passt (Debian 13's, built from its source package) beside Debian 12's;
# tools/build-passt.sh builds it once into $(VIRTNET_TEST_CACHE) (root only; outside the repository).
BUILD_PASST := tools/build-passt.sh
VIRTNET_TEST_CACHE ?= /var/cache/virtnet-test
export VIRTNET_TEST_CACHE

.DEFAULT_GOAL := help
.PHONY: help demo venv test-deps test regen lint conformance bench clean fuzz guest

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# An editable install has no bytecode of its own; compile it once (as installing a wheel does), so
# that a start-up does not compile virtnet, even where PYTHONDONTWRITEBYTECODE is set.
COMPILE := $(PY) -m compileall -q virtnet

venv: $(PY) ## create .venv and install virtnet editable (with bytecode)
	$(PY) -m pip install -q -e .
	$(COMPILE)

demo: venv ## run virtnet xml2argv on the seed case (pre-created tap, managed='no')
	$(VIRTNET) xml2argv $(SEED)

test-deps: $(PY) ## install test needs (pip, and apt packages when root and missing)
	$(PY) -m pip install -q -e '.[test]'
	$(COMPILE)
	@missing=0; for p in $(APT_PROBES); do [ -x $$p ] || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	  else echo "note: not root, so not installing $(APT_PACKAGES); tests that need them skip with a reason"; fi; \
	fi
	@bash $(BUILD_PASST) > /dev/null || echo "note: the current passt was not built (reason above); the tests that run it fail and say why"

test: test-deps ## install test needs and run the test suite
	$(PY) -m pytest -n 2 -q

regen: venv ## rewrite golden expectations (then read every changed line before committing)
	VIR_TEST_REGENERATE_OUTPUT=1 $(PY) -m pytest -q tests/test_golden.py
	git status --short testdata

conformance: venv ## compare with libvirt's net test corpus (../shared/conformance/libvirt); fails on regressions
	$(PY) tools/conformance.py --baseline tests/conformance_baseline.tsv

lint: venv ## pyflakes over the package, tests, benchmarks and tools
	$(PY) -m pip install -q pyflakes
	$(PY) -m pyflakes virtnet tests benchmarks tools

bench: test-deps ## run the benchmarks (host parts need root) and write benchmarks/results.md; BENCH_ARGS=--quick
	$(PY) benchmarks/run.py $(BENCH_ARGS)

fuzz: venv ## fuzz 100 000 mutated documents (CLI and namespace samples too); FUZZ_ARGS=--seed N replays
	$(PY) tools/fuzz.py --count 100000 --jobs $$(nproc) --cli 200 --netns 50 $(FUZZ_ARGS)

guest: ## build the tiny test guest from Debian packages (downloaded, not installed; cached), link it as guest/current and print its kernel/initrd paths
	$(PYTHON) tools/tiny-guest.py --link

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
